#!/usr/bin/env python3
"""Draw a pcpp-mpi run's timeline as a PNG: one lane per rank over time.

Compute (green), time blocked in waits (red), every exchange in flight from post to wait end
(up to 8 ranks; coloured by kind), step boundaries. Above 8 ranks the view aggregates to steps
and waits. Works on interrupted, failed and still running runs (the title says so).

Exit status: 0 written, 1 an input cannot be read or holds no step in the window, 2 bad
arguments.
"""

from __future__ import annotations

import argparse
import sys

from pcpp_mpi.analysis.cli import EXIT_OK, run_tool
from pcpp_mpi.analysis.clock import CLOCKS
from pcpp_mpi.analysis.files import load_run
from pcpp_mpi.analysis.timeline import DETAIL_MAX_RANKS, Window, plot_timeline


def _steps(text: str) -> tuple[int | None, int | None]:
    """``A:B`` (steps A..B-1), ``A:`` or ``:B``, or one step ``A``."""
    try:
        if ":" not in text:
            return int(text), int(text) + 1
        first, stop = text.split(":", 1)
        return (int(first) if first else None), (int(stop) if stop else None)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected A:B, A:, :B or A, got {text!r}") from exc


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="timeline.py", description=__doc__.splitlines()[0])
    p.add_argument("run", metavar="RUN", help="run directory or run.h5")
    p.add_argument("-o", "--output", default="timeline.png", help="PNG to write (timeline.png)")
    p.add_argument("--steps", type=_steps, metavar="A:B", help="only steps A..B-1 (zoom)")
    p.add_argument("--image", type=int, metavar="N", help="only image N")
    p.add_argument(
        "--phases", action="store_true", help="include the set-up phases (model load, decode)"
    )
    view = p.add_mutually_exclusive_group()
    view.add_argument(
        "--detail",
        dest="detailed",
        action="store_true",
        default=None,
        help=f"draw every exchange in flight (default up to {DETAIL_MAX_RANKS} ranks)",
    )
    view.add_argument(
        "--aggregate", dest="detailed", action="store_false", help="steps and waits only"
    )
    p.add_argument(
        "--clock",
        choices=CLOCKS,
        default="barrier",
        help="align ranks at the common barrier (default) or by their UNIX epoch times",
    )
    p.add_argument("--width", type=float, default=14.0, help="figure width in inches (14)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def body() -> int:
        run = load_run(args.run)
        first, stop = args.steps if args.steps else (None, None)
        window = Window(image=args.image, first_step=first, stop_step=stop, phases=args.phases)
        for note in run.notes():
            print(f"NOTE: {note}")
        path = plot_timeline(
            run,
            args.output,
            window=window,
            clock=args.clock,
            detailed=args.detailed,
            width_in=args.width,
        )
        print(f"wrote {path} ({len(run.ranks)} rank(s), status {run.status})")
        return EXIT_OK

    return run_tool("timeline.py", body)


if __name__ == "__main__":
    sys.exit(main())
