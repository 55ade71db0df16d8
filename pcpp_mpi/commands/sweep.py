"""``pcpp-mpi sweep list | array | start | finish | collect``: sweeps on Slurm array jobs.

``list`` and ``array`` check a sweep file and print the ``sbatch --array`` value; ``start``
and ``finish`` are the steps ``slurm/sweep.sbatch`` runs around each point; ``collect`` turns
a sweep directory into one table, finished or not. The sweep file format: docs/SLURM.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from pcpp_mpi.commands.exits import EXIT_FAILED, EXIT_OK, EXIT_REJECTED

FORMATS = ("csv", "json", "markdown")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``sweep`` and its own subcommands to the top-level subparsers."""
    sweep = sub.add_parser(
        "sweep",
        help="sweeps over Slurm array jobs: check, launch steps, collect the table",
        description="Sweep helper: check a sweep file, the steps slurm/sweep.sbatch runs, "
        "and the collected table.",
    )
    steps = sweep.add_subparsers(dest="sweep_command", required=True)
    show = steps.add_parser("list", help="check every point's configuration and list the points")
    show.add_argument("sweep", help="sweep file (YAML)")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    array = steps.add_parser("array", help="print the sbatch --array value that runs every point")
    array.add_argument("sweep", help="sweep file (YAML)")
    start = steps.add_parser("start", help="record a point's start; print its launch lines")
    start.add_argument("sweep", help="sweep file (YAML)")
    start.add_argument("index", type=int, help="point index (SLURM_ARRAY_TASK_ID)")
    start.add_argument("--dir", required=True, type=Path, help="sweep directory")
    start.add_argument("--available", type=int, required=True, help="tasks in the allocation")
    finish = steps.add_parser("finish", help="record a point's exit code and wall time")
    finish.add_argument("dir", type=Path, help="sweep directory")
    finish.add_argument("index", type=int, help="point index")
    finish.add_argument("--exit-code", type=int, required=True)
    collect = steps.add_parser(
        "collect",
        help="one table of a sweep directory, finished or not",
        description="One row per point: its settings, status (complete, failed, interrupted, "
        "or: missing = never started, running = no exit code yet, rejected = exit 2 before any "
        "work, killed = the ranks ended without finishing the run file, unreadable), exit "
        "code, rank count, steps finished (rank 0), wall times, bytes sent and received over "
        "all ranks, the first image, the Slurm job id and any error.",
        epilog="Statuses other than complete are listed too, so a partly finished sweep "
        "shows what is left to rerun.",
    )
    collect.add_argument("dir", type=Path, help="the sweep directory (runs/sweep-JOBID)")
    collect.add_argument("--format", choices=FORMATS, default="markdown", help="output format")
    collect.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    collect.add_argument(
        "--require-complete", action="store_true", help="exit 1 unless every point is complete"
    )
    sweep.set_defaults(handler=run_sweep_command)


def run_sweep_command(args: argparse.Namespace) -> int:
    """Dispatch ``pcpp-mpi sweep SUBCOMMAND``; a bad sweep file or directory exits 2."""
    from pcpp_mpi.sweep import SweepError

    try:
        if args.sweep_command == "finish":
            from pcpp_mpi.sweep import finish_point

            finish_point(args.dir, args.index, args.exit_code)
            return EXIT_OK
        if args.sweep_command == "collect":
            return _collect(args)
        return _with_sweep_file(args)
    except SweepError as exc:
        print(f"pcpp-mpi sweep: error: {exc}", file=sys.stderr)
        return EXIT_REJECTED


def _with_sweep_file(args: argparse.Namespace) -> int:
    from pcpp_mpi.sweep import array_spec, check_points, load_sweep, start_point

    sweep = load_sweep(args.sweep)
    if args.sweep_command == "array":
        print(array_spec(sweep))
        return EXIT_OK
    if args.sweep_command == "start":
        launch = start_point(sweep, args.index, args.dir, args.available)
        print("\n".join(launch.lines()))
        return EXIT_OK
    problems = check_points(sweep)
    if args.json:
        print(json.dumps({**sweep.as_dict(), "problems": problems}, indent=1))
    else:
        for point in sweep.points:
            print(f"{point.index:4d}  " + " ".join(sweep.overrides(point)), end="")
            print(f"  ntasks={point.ntasks}" if point.ntasks is not None else "")
        print(f"{len(sweep.points)} points: sbatch --array={array_spec(sweep)} ...")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return EXIT_REJECTED if problems else EXIT_OK


def _collect(args: argparse.Namespace) -> int:
    # Points still running hold their HDF5 files open for writing; read them without the lock.
    os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")
    from pcpp_mpi.sweep import FORMATTERS, collect

    keys, results = collect(args.dir)
    text = FORMATTERS[args.format](keys, results)
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text)
        print(
            f"pcpp-mpi sweep collect: wrote {args.output} ({len(results)} points)", file=sys.stderr
        )
    incomplete = [r.point for r in results if r.status != "complete"]
    if incomplete:
        print(f"pcpp-mpi sweep collect: points not complete: {incomplete}", file=sys.stderr)
        if args.require_complete:
            return EXIT_FAILED
    return EXIT_OK
