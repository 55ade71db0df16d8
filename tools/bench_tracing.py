#!/usr/bin/env python3
"""Measure the cost of tracing: the same job with ``runtime.trace=true`` and ``false``.

Launches ``mpirun -np RANKS`` once; inside, every rank runs the job ``2 x (REPEATS + 1)``
times through the engine (``run_job``, the path ``pcpp-mpi run`` takes), alternating
tracing on and off (on/off, off/on, ... so drift hits both equally); the first pair warms up
and is discarded. A step timer on every rank records when each step begins, whether tracing
is on or not (two ``perf_counter`` calls per step), so both settings are timed the same way.

Figure: the *step period* (from one step's start to the next one's, so it includes what a
rank does between steps: writing and flushing the rank file, the progress bar, the stop
check) of the slowest rank, for the steps after the warm-up steps (``parallel.warmup_steps``,
at least the first); the median over those steps and ranks per run, then the median over
the runs of each setting. Overhead = (traced - untraced) / untraced. On a shared CPU machine
the noise between runs is of the same order: the spread is printed with the figure.

Exit status: 0 measured, 1 the launch failed, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_JOB = REPO / "tests" / "data_tiny_exact.yaml"


# ----------------------------------------------------------------------------- worker side
def _worker(spec_path: str) -> int:
    import mpi4py

    mpi4py.rc.thread_level = "multiple"
    from mpi4py import MPI

    from pcpp_mpi.comm.context import RankComm
    from pcpp_mpi.config import load_job
    from pcpp_mpi.engine.runner import run_job
    from pcpp_mpi.trace.recorder import Tracer

    @dataclass
    class StepTimer(Tracer):
        """A Tracer that also notes when every step begins (perf_counter seconds)."""

        starts: list[float] = field(default_factory=list)

        def begin_step(self, image: int, step: int, kind: str) -> None:
            self.starts.append(time.perf_counter())
            super().begin_step(image, step, kind)

    spec = json.loads(Path(spec_path).read_text())
    world = MPI.COMM_WORLD
    results = []
    for index, (trace, name) in enumerate(spec["schedule"]):
        job = load_job(spec["job"], [*spec["overrides"], f"runtime.trace={str(trace).lower()}"])
        groups = 2 if job.parallel.cfg_parallel and world.Get_size() % 2 == 0 else 1
        comm = RankComm(world, groups)
        timer = StepTimer()
        comm.tracer = timer
        run_job(job, comm, Path(spec["out"]) / f"{index:02d}-{name}", progress=False)
        comm.free()
        starts = world.gather(timer.starts, root=0)
        if world.Get_rank() == 0:
            results.append(
                {
                    "trace": trace,
                    "warmup": index < 2,
                    "starts": starts,
                    "skip": max(1, job.parallel.warmup_steps),
                }
            )
    if world.Get_rank() == 0:
        Path(spec["result"]).write_text(json.dumps(results))
    return 0


# ----------------------------------------------------------------------------- launcher side
def _mpirun() -> str:
    beside = Path(sys.executable).parent / "mpirun"
    found = str(beside) if beside.exists() else shutil.which("mpirun")
    if found is None:
        raise SystemExit("bench_tracing.py: error: no mpirun beside the interpreter or on PATH")
    return found


def run_period(starts_per_rank: list[list[float]], skip: int) -> float:
    """Median over steps of the slowest rank's step period (seconds)."""
    n = min(len(s) for s in starts_per_rank)
    periods = []
    for k in range(skip, n - 1):
        periods.append(max(s[k + 1] - s[k] for s in starts_per_rank))
    if not periods:
        raise ValueError("too few steps to time: raise --steps")
    return statistics.median(periods)


def summarise(results: list[dict]) -> dict:
    """Median step period with tracing on and off, and the relative overhead."""
    on = [run_period(r["starts"], r["skip"]) for r in results if r["trace"] and not r["warmup"]]
    off = [
        run_period(r["starts"], r["skip"]) for r in results if not r["trace"] and not r["warmup"]
    ]
    median_on, median_off = statistics.median(on), statistics.median(off)
    return {
        "traced_period_s": median_on,
        "untraced_period_s": median_off,
        "overhead": (median_on - median_off) / median_off,
        "traced_runs_s": on,
        "untraced_runs_s": off,
    }


def recording_cost(rank_file: Path, repeats: int = 30) -> dict:
    """Direct cost of recording one step, on this process, with a traced run's row counts.

    Times what tracing adds per step on a rank: the tracer calls for each exchange
    (``posted`` + ``waited``) and appending the step's rows to a rank file (steps, exchanges,
    traffic, flushed), minus appending the traffic rows alone (what an untraced step writes).
    Medians over ``repeats`` steps, seconds.
    """
    import h5py

    from pcpp_mpi.output.rank_file import RankFile
    from pcpp_mpi.trace.recorder import Tracer

    with h5py.File(rank_file, "r", locking=False) as file:
        rows = file["exchanges"][()]
        steps = max(int(file["steps"].shape[0]), 1)
    per_step = max(round(len(rows) / steps), 1)
    layers = [r.decode() if isinstance(r, bytes) else str(r) for r in rows["layer"][:per_step]]
    layers += ["layer"] * (per_step - len(layers))
    traffic = [(0, 0, "halo", 1, 1), (0, 0, "kv", 1, 1), (0, 0, "norm", 1, 1)]
    work = Path(tempfile.mkdtemp(prefix="bench-recording-"))
    traced, untraced, tracer_calls = [], [], []
    try:
        with_rows = RankFile(work / "on.h5", {"rank": 0})
        without = RankFile(work / "off.h5", {"rank": 0})
        tracer = Tracer()
        for step in range(repeats):
            t0 = time.perf_counter()
            tracer.begin_step(0, step, "displaced")
            for layer in layers:
                tracer.posted(layer, "halo", step, [(1, 4096, 4096)])
                tracer.waited(layer, step, 0.0, 0.0)
            tracer.end_step()
            t1 = time.perf_counter()
            done_steps, exchanges, _ = tracer.take_finished()
            t2 = time.perf_counter()
            with_rows.append(steps=done_steps, exchanges=exchanges, traffic=traffic)
            t3 = time.perf_counter()
            without.append(traffic=traffic)
            t4 = time.perf_counter()
            tracer_calls.append(t1 - t0)
            traced.append(t3 - t2)
            untraced.append(t4 - t3)
        with_rows.close()
        without.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    tracer_s = statistics.median(tracer_calls)
    append_s = statistics.median(traced) - statistics.median(untraced)
    return {
        "exchange_rows_per_step": per_step,
        "tracer_calls_s": tracer_s,
        "extra_append_s": append_s,
        "recording_cost_s": tracer_s + append_s,
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench_tracing.py", description=__doc__.splitlines()[0])
    p.add_argument("--job", default=str(DEFAULT_JOB), help="job YAML (tests/data_tiny_exact.yaml)")
    p.add_argument("--ranks", type=int, default=2, help="MPI ranks (2)")
    p.add_argument("--repeats", type=int, default=4, help="timed runs per setting (4)")
    p.add_argument("--steps", type=int, default=10, help="denoising steps per run (10)")
    p.add_argument("--mode", default="pcpp", help="parallel.mode (pcpp)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--keep", metavar="DIR", help="keep the run directories in DIR")
    p.add_argument("--worker", metavar="SPEC", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.worker:
        return _worker(args.worker)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-tracing-"))
    work.mkdir(parents=True, exist_ok=True)
    schedule = []
    for pair in range(args.repeats + 1):
        order = [True, False] if pair % 2 == 0 else [False, True]
        schedule += [(t, f"{pair}-{'on' if t else 'off'}") for t in order]
    overrides = [f"parallel.mode={args.mode}", f"generation.steps={args.steps}", *args.overrides]
    spec = {
        "job": args.job,
        "overrides": overrides,
        "schedule": schedule,
        "out": str(work / "runs"),
        "result": str(work / "result.json"),
    }
    (work / "spec.json").write_text(json.dumps(spec))
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    command = [
        _mpirun(),
        "-np",
        str(args.ranks),
        "--oversubscribe",
        "--bind-to",
        "none",
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        str(work / "spec.json"),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
        print(
            f"bench_tracing.py: error: the launch failed (exit {done.returncode})", file=sys.stderr
        )
        return 1
    result = summarise(json.loads((work / "result.json").read_text()))
    traced_rank_file = next((work / "runs").glob("*-on/rank-0000.h5"))
    result.update(recording_cost(traced_rank_file))
    result["recording_share"] = result["recording_cost_s"] / result["untraced_period_s"]
    result.update(
        ranks=args.ranks,
        steps=args.steps,
        mode=args.mode,
        repeats=args.repeats,
        job=args.job,
        overrides=overrides,
    )
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    spread_on = (
        f"{min(result['traced_runs_s']) * 1e3:.1f}..{max(result['traced_runs_s']) * 1e3:.1f}"
    )
    spread_off = (
        f"{min(result['untraced_runs_s']) * 1e3:.1f}..{max(result['untraced_runs_s']) * 1e3:.1f}"
    )
    print(
        f"job {args.job}, {args.ranks} ranks, mode {args.mode}, {args.steps} steps, "
        f"{args.repeats} runs per setting after one warm-up pair"
    )
    print(
        f"step period, tracing on : {result['traced_period_s'] * 1e3:.2f} ms (runs: {spread_on} ms)"
    )
    print(
        f"step period, tracing off: {result['untraced_period_s'] * 1e3:.2f} ms "
        f"(runs: {spread_off} ms)"
    )
    print(f"tracing overhead: {100 * result['overhead']:+.2f}% of the step period")
    print(
        f"direct recording cost per step ({result['exchange_rows_per_step']} exchange rows): "
        f"{result['recording_cost_s'] * 1e3:.2f} ms (tracer calls "
        f"{result['tracer_calls_s'] * 1e3:.2f} ms, extra rank-file append "
        f"{result['extra_append_s'] * 1e3:.2f} ms) = {100 * result['recording_share']:.2f}% "
        "of the untraced step period"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
