"""The ``pcpp-mpi`` command: ``run`` here; ``plan``, ``info``, ``summary``, ``timeline``,
``perfetto``, ``compare`` and ``sweep`` from :mod:`pcpp_mpi.commands`.

Exit codes of ``run``: 0 success; 1 the run failed while generating; 2 the job was rejected
before any model was loaded (configuration, geometry, output directory or one another job
holds, model folder); 3 the run was interrupted by SIGTERM, SIGINT or SIGUSR1 and stopped
cleanly at a step boundary. These are the ranks' codes; Open MPI's ``mpirun`` that itself gets
SIGTERM or SIGINT exits 1 although the ranks exit 3 (docs/RELIABILITY.md has each launcher's
codes).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pcpp_mpi.commands import analysis, info, plan, sweep
from pcpp_mpi.commands.exits import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_REJECTED
from pcpp_mpi.config.arguments import add_settings_argument

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_REJECTED", "main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pcpp-mpi",
        description="Patch-parallel diffusion inference over MPI (DistriFusion / PCPP).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="generate the job's images (under mpirun/srun or alone)")
    run.add_argument("job", help="job YAML file")
    run.add_argument("--out", required=True, help="run directory (created; must be empty)")
    add_settings_argument(run, "parallel.ratio=0.5")
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the files a finished run wrote in --out (never a running job's)",
    )
    run.add_argument(
        "--break-lock",
        action="store_true",
        help="take over --out from a job on another host that holds it but no longer runs",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--verbose", action="store_true", help="debug logging on every rank")

    run.set_defaults(handler=_run)

    for commands in (plan, info, analysis, sweep):
        commands.register(sub)
    return parser


def _run(args: argparse.Namespace) -> int:
    from pcpp_mpi.engine.stopping import StopSignals

    # installed before the slow imports and the model load: a stop signal during start-up
    # ends the run cleanly at its first step boundary instead of killing the rank
    with StopSignals() as signals:
        return _run_with(args, signals)


def _run_with(args: argparse.Namespace, signals) -> int:
    import mpi4py

    mpi4py.rc.thread_level = "multiple"
    from mpi4py import MPI

    from pcpp_mpi.comm.context import RankComm
    from pcpp_mpi.comm.mpi_info import cuda_aware
    from pcpp_mpi.config import ConfigError, load_job
    from pcpp_mpi.engine.runner import JobError, run_job
    from pcpp_mpi.engine.stopping import RunInterrupted
    from pcpp_mpi.logs import setup_logging
    from pcpp_mpi.plan.topology import cfg_group_count

    world = MPI.COMM_WORLD
    rank, size = world.Get_rank(), world.Get_size()
    setup_logging(rank, size, args.verbose)
    job, error = None, None
    try:
        job = load_job(args.job, args.overrides)
    except ConfigError as exc:
        error = str(exc)
    errors = world.allgather(error)
    if any(e is not None for e in errors):
        if rank == 0:
            first = next(r for r, e in enumerate(errors) if e is not None)
            same = all(e == errors[first] for e in errors)
            where = "" if same else f"[rank {first}] "
            print(f"pcpp-mpi run: error: {where}{errors[first]}", file=sys.stderr)
        return EXIT_REJECTED
    assert job is not None
    cfg_groups = cfg_group_count(job.parallel.cfg_parallel, size)
    comm = RankComm(world, cfg_groups, cuda_aware=bool(cuda_aware()))
    try:
        result = run_job(
            job,
            comm,
            args.out,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            signals=signals,
            break_lock=args.break_lock,
        )
    except JobError as exc:
        if rank == 0:
            print(f"pcpp-mpi run: error: {exc}", file=sys.stderr)
        return EXIT_REJECTED
    except RunInterrupted:
        return EXIT_INTERRUPTED
    except Exception as exc:  # one rank only: several ranks abort the job in run_job
        print(f"pcpp-mpi run: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if rank == 0:
        print(f"pcpp-mpi: wrote {result.run_file}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: the process's arguments), run the subcommand, return its code."""
    args = _parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
