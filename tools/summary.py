#!/usr/bin/env python3
"""Summarise the traces of one or more pcpp-mpi runs: per rank and per run.

Step time (median, p95; the first step reported on its own), compute, exposed communication,
overlap efficiency, load imbalance, bytes per step by kind and peak memory; several runs side
by side, with speed-ups against a baseline run. Definitions: docs/TOOLS.md.

Exit status: 0 done (also for interrupted, failed or still running runs: the output says
so), 1 an input cannot be read (missing, not a pcpp-mpi file, unknown schema version),
2 bad arguments.
"""

from __future__ import annotations

import argparse
import sys

from pcpp_mpi.analysis.cli import EXIT_OK, run_tool
from pcpp_mpi.analysis.files import load_run
from pcpp_mpi.analysis.report import format_text, to_csv, to_json
from pcpp_mpi.analysis.summary import baseline_notes, summarize_run, with_baseline


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="summary.py",
        description="Per-rank and per-run figures from pcpp-mpi trace files "
        "(run directories or their run.h5).",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directory or run.h5 (one or more)")
    p.add_argument(
        "--baseline",
        metavar="RUN",
        help="a 'single' run: report speed-ups (baseline time / run time) against it",
    )
    output = p.add_mutually_exclusive_group()
    output.add_argument("--csv", action="store_true", help="CSV, one row per rank and per run")
    output.add_argument("--json", action="store_true", help="JSON with the definitions")
    p.add_argument(
        "--include-first",
        action="store_true",
        help="count the first step in the step statistics (default: reported apart)",
    )
    p.add_argument(
        "--no-ranks", action="store_true", help="text: only the runs side by side, no rank tables"
    )
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def body() -> int:
        traces = [load_run(path) for path in args.runs]
        runs = [summarize_run(t, include_first=args.include_first) for t in traces]
        baseline = None
        notes: list[str] = []
        if args.baseline:
            base_trace = load_run(args.baseline)
            baseline = summarize_run(base_trace, include_first=args.include_first)
            runs = [with_baseline(run, baseline) for run in runs]
            notes = baseline_notes(base_trace, traces)
        if args.csv:
            text = to_csv(runs, baseline)
        elif args.json:
            text = to_json(runs, baseline, notes)
        else:
            text = format_text(runs, baseline, per_rank=not args.no_ranks, extra_notes=notes)
        if args.csv or args.json:  # keep machine output clean; say what matters on stderr
            for run in ([baseline] if baseline else []) + runs:
                for note in run.notes:
                    print(f"summary.py: note: {run.path}: {note}", file=sys.stderr)
            for note in notes:
                print(f"summary.py: note: {note}", file=sys.stderr)
        if args.output:
            with open(args.output, "w", encoding="utf-8") as out:
                out.write(text)
        else:
            sys.stdout.write(text)
        return EXIT_OK

    return run_tool("summary.py", body)


if __name__ == "__main__":
    sys.exit(main())
