#!/usr/bin/env python3
"""Convert a pcpp-mpi run's traces to Chrome trace-event JSON for Perfetto / chrome://tracing.

One process per rank (threads: steps, waits, phases), every message as an async slice, a
flow arrow from each send to the wait that completed its receive. Open the file at
https://ui.perfetto.dev (Open trace file) or in chrome://tracing. Works on interrupted, failed
and still running runs (the trace's metadata and this command's output say so).

Exit status: 0 written, 1 an input cannot be read, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import sys

from pcpp_mpi.analysis.cli import EXIT_OK, run_tool
from pcpp_mpi.analysis.clock import CLOCKS
from pcpp_mpi.analysis.files import load_run
from pcpp_mpi.analysis.perfetto import write_trace


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="perfetto.py", description=__doc__.splitlines()[0])
    p.add_argument("run", metavar="RUN", help="run directory or run.h5")
    p.add_argument("-o", "--output", default="trace.json", help="JSON to write (trace.json)")
    p.add_argument(
        "--clock",
        choices=CLOCKS,
        default="barrier",
        help="align ranks at the common barrier (default) or by their UNIX epoch times",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def body() -> int:
        run = load_run(args.run)
        for note in run.notes():
            print(f"NOTE: {note}")
        document = write_trace(run, args.output, clock=args.clock)
        info = document["otherData"]
        print(
            f"wrote {args.output}: {len(document['traceEvents'])} events, "
            f"{info['matched']} of {info['messages']} messages paired with their receive "
            f"({len(run.ranks)} rank(s), status {run.status})"
        )
        return EXIT_OK

    return run_tool("perfetto.py", body)


if __name__ == "__main__":
    sys.exit(main())
