#!/usr/bin/env python3
"""Collect a sweep run by slurm/sweep.sbatch into one table, finished or not.

    python tools/collect_sweep.py runs/sweep-1234                  # markdown on stdout
    python tools/collect_sweep.py runs/sweep-1234 --format csv -o sweep.csv
    python tools/collect_sweep.py runs/sweep-1234 --format json --require-complete

One row per point: its settings, status (complete, failed, interrupted, or: missing = never
started, running = no exit code yet, rejected = exit 2 before any work, killed = the ranks ended
without finishing the run file, unreadable), exit code, rank count, denoising steps finished
(rank 0), wall time of the array task (wall_s), of the run file (run_s) and of the finished
steps (denoise_s), bytes sent and received over all ranks (the rank files' /traffic tables),
the first image, the Slurm job id and any error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

# Points still running hold their HDF5 files open for writing; read them without HDF5's lock.
os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")

from pcpp_mpi.sweep import FORMATTERS, SweepError, collect


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="collect_sweep.py",
        description=(__doc__ or "").split("\n\n", 1)[0],
        epilog="Statuses other than complete are listed too, so a partly finished sweep "
        "shows what is left to rerun.",
    )
    parser.add_argument("sweep_dir", type=Path, help="the sweep directory (runs/sweep-JOBID)")
    parser.add_argument(
        "--format", choices=sorted(FORMATTERS), default="markdown", help="output format"
    )
    parser.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    parser.add_argument(
        "--require-complete",
        action="store_true",
        help="exit 1 unless every point is complete",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        keys, results = collect(args.sweep_dir)
    except SweepError as exc:
        print(f"collect_sweep.py: error: {exc}", file=sys.stderr)
        return 2
    text = FORMATTERS[args.format](keys, results)
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text)
        print(f"collect_sweep.py: wrote {args.output} ({len(results)} points)", file=sys.stderr)
    incomplete = [r.point for r in results if r.status != "complete"]
    if incomplete:
        print(f"collect_sweep.py: points not complete: {incomplete}", file=sys.stderr)
        if args.require_complete:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
