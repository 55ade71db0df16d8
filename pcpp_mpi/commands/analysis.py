"""``pcpp-mpi summary | timeline | perfetto | compare``: read what runs wrote (no MPI, no GPU).

Thin wrappers over :mod:`pcpp_mpi.analysis`; figures and definitions: docs/TOOLS.md. They work
on interrupted, failed, still running and killed runs (and say so).

Exit status: 0 done; 1 an input cannot be used (missing, not a pcpp-mpi file, unknown schema
version, no image to compare, images of different sizes, nothing in the chosen window);
2 bad command line.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

from pcpp_mpi.analysis.clock import CLOCKS
from pcpp_mpi.commands.exits import EXIT_FAILED, EXIT_OK

#: Ranks up to which the timeline draws every exchange: ``analysis.timeline.DETAIL_MAX_RANKS``,
#: repeated here so that building the parser does not import matplotlib (a test checks both).
DETAIL_MAX_RANKS = 8


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``summary``, ``timeline``, ``perfetto`` and ``compare`` to the subparsers."""
    _add_summary(sub)
    _add_timeline(sub)
    _add_perfetto(sub)
    _add_compare(sub)


def run_tool(name: str, body: Callable[[], int]) -> int:
    """Run ``body``; a file or input problem becomes one ``pcpp-mpi NAME: error:`` line, exit 1."""
    from pcpp_mpi.analysis.images import ImageMismatch
    from pcpp_mpi.output.errors import OutputError, SchemaError

    try:
        return body()
    except SchemaError as exc:
        print(f"pcpp-mpi {name}: error: unsupported file: {exc}", file=sys.stderr)
    except (OutputError, ImageMismatch, ValueError, OSError) as exc:
        print(f"pcpp-mpi {name}: error: {exc}", file=sys.stderr)
    return EXIT_FAILED


def _clock_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--clock",
        choices=CLOCKS,
        default="barrier",
        help="align ranks at the common barrier (default) or by their UNIX epoch times",
    )


# -- summary ----------------------------------------------------------------------------------


def _add_summary(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "summary",
        help="per-rank and per-run figures: step time, exposed communication, bytes, memory",
        description="Per-rank and per-run figures from pcpp-mpi trace files (run directories "
        "or their run.h5): step time (median, p95; the first step apart), compute, exposed "
        "communication, overlap efficiency, load imbalance, bytes per step by kind, peak "
        "memory; several runs side by side, with speed-ups against a baseline run.",
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
    p.set_defaults(handler=lambda args: run_tool("summary", lambda: _summary(args)))


def _summary(args: argparse.Namespace) -> int:
    from pcpp_mpi.analysis.files import load_run
    from pcpp_mpi.analysis.report import format_text, to_csv, to_json
    from pcpp_mpi.analysis.summary import baseline_notes, summarize_run, with_baseline

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
                print(f"pcpp-mpi summary: note: {run.path}: {note}", file=sys.stderr)
        for note in notes:
            print(f"pcpp-mpi summary: note: {note}", file=sys.stderr)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as out:
            out.write(text)
    else:
        sys.stdout.write(text)
    return EXIT_OK


# -- timeline ---------------------------------------------------------------------------------


def _steps(text: str) -> tuple[int | None, int | None]:
    """``A:B`` (steps A..B-1), ``A:`` or ``:B``, or one step ``A``."""
    try:
        if ":" not in text:
            return int(text), int(text) + 1
        first, stop = text.split(":", 1)
        return (int(first) if first else None), (int(stop) if stop else None)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected A:B, A:, :B or A, got {text!r}") from exc


def _add_timeline(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "timeline",
        help="a PNG with one lane per rank over time",
        description="Draw a pcpp-mpi run's timeline as a PNG: one lane per rank over time. "
        "Compute (green), time blocked in waits (red), every exchange in flight from post to "
        f"wait end (up to {DETAIL_MAX_RANKS} ranks; coloured by kind), step boundaries.",
    )
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
    _clock_option(p)
    p.add_argument("--width", type=float, default=14.0, help="figure width in inches (14)")
    p.set_defaults(handler=lambda args: run_tool("timeline", lambda: _timeline(args)))


def _timeline(args: argparse.Namespace) -> int:
    from pcpp_mpi.analysis.files import load_run
    from pcpp_mpi.analysis.timeline import Window, plot_timeline

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


# -- perfetto ---------------------------------------------------------------------------------


def _add_perfetto(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "perfetto",
        help="Chrome trace-event JSON for ui.perfetto.dev or chrome://tracing",
        description="Convert a pcpp-mpi run's traces to Chrome trace-event JSON: one process "
        "per rank (threads: steps, waits, phases), every message as an async slice, a flow "
        "arrow from each send to the wait that completed its receive. Open the file at "
        "https://ui.perfetto.dev or in chrome://tracing.",
    )
    p.add_argument("run", metavar="RUN", help="run directory or run.h5")
    p.add_argument("-o", "--output", default="trace.json", help="JSON to write (trace.json)")
    _clock_option(p)
    p.set_defaults(handler=lambda args: run_tool("perfetto", lambda: _perfetto(args)))


def _perfetto(args: argparse.Namespace) -> int:
    from pcpp_mpi.analysis.files import load_run
    from pcpp_mpi.analysis.perfetto import write_trace

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


# -- compare ----------------------------------------------------------------------------------


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="PSNR, SSIM, max |difference| and a heat map of two runs' images",
        description="Compare the images of two pcpp-mpi runs: PSNR, SSIM, max |difference| "
        "and a heat map per image (A, B, difference); the final latents' maximum absolute "
        "difference too when both runs hold them.",
    )
    p.add_argument("a", metavar="A", help="run directory or run.h5")
    p.add_argument("b", metavar="B", help="run directory or run.h5")
    p.add_argument(
        "--png",
        default="compare.png",
        help="heat-map PNG (compare.png); with several images: STEM-image-NNNN.png",
    )
    p.add_argument("--no-png", action="store_true", help="figures only, no PNG")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.set_defaults(handler=lambda args: run_tool("compare", lambda: _compare(args)))


def _png_path(base: Path, name: str, several: bool) -> Path:
    return base.with_name(f"{base.stem}-{name}{base.suffix or '.png'}") if several else base


def _compare(args: argparse.Namespace) -> int:
    from pcpp_mpi.analysis.compare import compare_runs, load_run_images
    from pcpp_mpi.analysis.images import plot_difference

    a, b = load_run_images(args.a), load_run_images(args.b)
    result = compare_runs(a, b)
    pngs: dict[str, str] = {}
    if not args.no_png:
        several = len(result.images) > 1
        for image in result.images:
            path = _png_path(Path(args.png), image.name, several)
            title = (
                f"{image.name}: PSNR {_db(image.psnr_db)}, SSIM {image.ssim:.4f}, "
                f"max |diff| {image.max_abs_diff:.0f}"
            )
            plot_difference(
                a.images[image.name],
                b.images[image.name],
                path,
                labels=(f"A: {a.label}", f"B: {b.label}"),
                title=title,
            )
            pngs[image.name] = str(path)
    if args.json:
        document = {
            "a": {"path": str(a.meta.path), "status": a.meta.status},
            "b": {"path": str(b.meta.path), "status": b.meta.status},
            "images": [{**i.as_dict(), "png": pngs.get(i.name)} for i in result.images],
            "notes": result.notes,
        }
        print(json.dumps(document, indent=1))
        for note in result.notes:
            print(f"pcpp-mpi compare: note: {note}", file=sys.stderr)
        return EXIT_OK
    print(f"A: {a.label}")
    print(f"B: {b.label}")
    for note in result.notes:
        print(f"NOTE: {note}")
    for image in result.images:
        latent = (
            ""
            if image.latent_max_abs_diff is None
            else f"  latent max |diff| {image.latent_max_abs_diff:.3g}"
        )
        png = f"  -> {pngs[image.name]}" if image.name in pngs else ""
        print(
            f"{image.name} ({image.height}x{image.width}): PSNR {_db(image.psnr_db)}  "
            f"SSIM {image.ssim:.4f}  max |diff| {image.max_abs_diff:.0f}/255  "
            f"mean |diff| {image.mean_abs_diff:.3f}{latent}{png}"
        )
    return EXIT_OK


def _db(value: float) -> str:
    return "inf (identical)" if math.isinf(value) else f"{value:.2f} dB"
