#!/usr/bin/env python3
"""GPU time of one band's denoising step alone: each captured CUDA-graph variant replayed
with nothing else on the GPU and no MPI between its graphs.

A step replayed as CUDA graphs is GPU work with MPI between the graphs. Replaying one rank's
graphs back to back, without the MPI actions (the buffers they read keep whatever they hold),
times the step's computation as if the network and the other ranks cost nothing: the bound a
mode can reach on this GPU, and the figure that kernel-level changes move. Ranks take turns
(the others wait at a barrier), so ranks that share one GPU each have it to themselves while
timed; that makes the figures meaningful on a machine with fewer GPUs than ranks.

For each mode, every rank runs one image of ``--steps`` steps (capturing its variants), then
replays each variant ``--replays`` times after ``--warmup`` replays; ``single`` runs on rank 0
alone. Variants are named ``kind/previous kind/parity``; a displaced mode's steady state is
``displaced/displaced/*``. ``--profile`` adds, for rank 0's steady-state variants
(``local/local/0``, ``displaced/displaced/0``), the kernels of a few more replays under
``torch.profiler``: count, busy and idle time and time by category per step. The bounds: a
``--image-steps``-step image timed as the sum of the variants its steps replay (slowest rank),
and the fastest one-GPU image's over each mode's. The one-GPU references are ``single`` and the
plain diffusers network (UNet or transformer, no pcpp-mpi) replayed as one CUDA graph per call,
uncompiled (``plain-graph``) and ``torch.compile``'d first (``plain-compile``: ``fullgraph``,
inductor), timed on rank 0 like ``single``. Whether the pcpp-mpi modes are compiled follows
``runtime.compile`` (``--set runtime.compile=false`` for the uncompiled path). Output:
``band_steps.json`` and ``band_steps.md`` in ``--out``.

    mpirun -np 2 python tools/bench_band_step.py --arch sdxl --size 1024 --out band-steps

Modes measured in one process can disturb each other (a ``distrifusion`` step measured after
three other modes once took 30.9 ms, 23.4 ms alone), so ``tools/device/band_steps.sh`` runs
each mode in a process of its own and joins the reports, with the bounds, by ``--merge``::

    python tools/bench_band_step.py --merge band-*/band_steps.json --out band-steps

(no GPU needed; the reports must come from the same settings and name each mode once).

Exit status: 0 measured, 2 bad arguments (e.g. no CUDA device).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import get_args

import mpi4py

mpi4py.rc.thread_level = "multiple"
import torch  # noqa: E402
from mpi4py import MPI  # noqa: E402

from pcpp_mpi.analysis.kernels import profile_from_events  # noqa: E402
from pcpp_mpi.comm.context import RankComm  # noqa: E402
from pcpp_mpi.comm.mpi_info import cuda_aware  # noqa: E402
from pcpp_mpi.config import ConfigError, job_from_dict  # noqa: E402
from pcpp_mpi.config.arguments import add_settings_argument  # noqa: E402
from pcpp_mpi.config.schema import ArchName  # noqa: E402
from pcpp_mpi.engine.compile import compile_enabled  # noqa: E402
from pcpp_mpi.engine.denoise import denoise_band  # noqa: E402
from pcpp_mpi.engine.setup import DTYPES, prepare_band_context  # noqa: E402
from pcpp_mpi.engine.streams import compute_stream  # noqa: E402
from pcpp_mpi.families import denoiser_family  # noqa: E402
from pcpp_mpi.models import load_model  # noqa: E402
from pcpp_mpi.models.random_arch import measurement_model  # noqa: E402
from pcpp_mpi.parallel.band_norm import resolve_norm_kernels  # noqa: E402
from pcpp_mpi.plan.schedule import step_kind  # noqa: E402

MODES = ("single", "naive", "pcpp", "distrifusion", "sync", "plain-graph", "plain-compile")
PLAIN = ("plain-graph", "plain-compile")  # one-GPU references: plain diffusers network calls
PROFILED = ("local/local/0", "displaced/displaced/0")
PROFILE_RANGE = "pcpp-mpi band step replays"
PROFILE_REPLAYS = 5
CATEGORY_COLUMNS = (
    "attention", "gemm", "convolution", "normalisation", "copy", "elementwise", "other",
)  # fmt: skip
PROMPT = "a benchmark prompt"


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", default="sdxl", choices=("tiny", *get_args(ArchName)))
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--steps", type=int, default=8, help="steps of the capturing image")
    parser.add_argument("--warmup-steps", type=int, default=4)
    parser.add_argument(
        "--image-steps",
        type=int,
        default=50,
        help="steps of the image the bounds are computed for (same warm-up steps)",
    )
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--warmup", type=int, default=3, help="untimed replays per variant")
    parser.add_argument("--replays", type=int, default=20, help="timed replays per variant")
    parser.add_argument("--dtype", default="float16", choices=tuple(DTYPES))
    parser.add_argument("--profile", action="store_true", help="kernels of rank 0's steady state")
    add_settings_argument(parser, "runtime.norm_kernels=torch (every mode)")
    parser.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        metavar="JSON",
        help="join these band_steps.json reports (one mode each, same settings) into --out",
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.steps <= args.warmup_steps + 2:
        parser.error("--steps must exceed --warmup-steps by 3 or more (displaced variants)")
    if args.image_steps < 1:
        parser.error("--image-steps must be at least 1")
    try:
        _job(args, "pcpp")
    except ConfigError as error:
        parser.error(str(error))
    return args


def _job(args: argparse.Namespace, mode: str):
    return job_from_dict(
        {
            "model": measurement_model(args.arch),
            "generation": {
                "prompts": [PROMPT],
                "height": args.size,
                "width": args.size,
                "steps": args.steps,
                "guidance_scale": 5.0,
            },
            "runtime": {"dtype": args.dtype, "device": "cuda", "graphs": "auto"},
            "parallel": {"mode": mode, "warmup_steps": args.warmup_steps, "ratio": args.ratio},
        },
        args.overrides,
    )


def _profile_replays(graphs: list) -> dict | None:
    """Kernel summary per replay of ``graphs`` (torch.profiler over a few replays)."""
    from torch.profiler import ProfilerActivity, profile, record_function

    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA]
    with profile(activities=activities) as prof, record_function(PROFILE_RANGE):
        for _ in range(PROFILE_REPLAYS):
            for graph in graphs:
                graph.replay()
        torch.cuda.synchronize()
    summary = profile_from_events(prof.events(), PROFILE_RANGE, PROFILE_REPLAYS, top=60)
    return None if summary is None else summary.to_dict()


def _time_variants(
    graphs_by_variant: dict, warmup: int, replays: int, profiled: tuple[str, ...] = ()
) -> dict[str, dict]:
    """Milliseconds per replay of each variant's graphs, back to back on the current stream
    (and a kernel profile of the variants named in ``profiled``)."""
    figures = {}
    for key, graphs in graphs_by_variant.items():
        for _ in range(warmup):
            for graph in graphs:
                graph.replay()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(replays):
            for graph in graphs:
                graph.replay()
        end.record()
        end.synchronize()
        kind, previous, parity = key
        name = f"{kind}/{previous}/{parity}"
        figures[name] = {"ms": start.elapsed_time(end) / replays, "graphs": len(graphs)}
        if name in profiled:
            figures[name]["profile"] = _profile_replays(graphs)
    return figures


def _measure(args, mode: str, comm: RankComm, bundle, device, world) -> dict[str, dict] | None:
    """Capture ``mode``'s variants on ``comm``'s ranks, then time them rank by rank."""
    job = _job(args, mode)
    with compute_stream(device, job.runtime.compute_stream):
        ctx = prepare_band_context(job, comm, bundle, device)
        try:
            denoise_band(ctx, PROMPT, "", 0)
            ctx.handle.drain()
            torch.cuda.synchronize(device)
            figures = None
            for turn in range(world.Get_size()):
                world.Barrier()
                if turn == world.Get_rank():
                    profiled = PROFILED if args.profile and turn == 0 else ()
                    captured = ctx.graphs.captured()
                    figures = _time_variants(captured, args.warmup, args.replays, profiled)
                    for figure in figures.values():  # seconds this rank compiled, per phase
                        figure["compile_s"] = dict(ctx.graphs.compile_times)
            world.Barrier()
            return figures
        finally:
            ctx.handle.remove()


def _measure_plain(args, mode: str, bundle, device) -> dict[str, dict]:
    """``plain-graph`` / ``plain-compile``: the plain diffusers network (the model family's
    network, no band layers) on the whole latent (CFG batch 2) captured as one CUDA graph
    (after ``torch.compile`` for ``plain-compile``) and replayed alone; the figure is given for
    every variant name a ``single`` image uses, so the bounds treat it as a one-GPU image."""
    size = args.size // bundle.vae_scale_factor
    dtype = DTYPES[args.dtype]
    model_config = _job(args, "single").model
    family = denoiser_family(model_config)
    channels = family.model_shape(model_config).latent_channels
    sample = torch.randn((2, channels, size, size), device=device).to(dtype)
    timestep = torch.tensor(500, device=device)
    conditioning = family.conditioning(bundle, ["", PROMPT], args.size, args.size, device, dtype)
    inputs = family.step_inputs(sample, timestep, conditioning)
    model = family.network(bundle)
    if mode == "plain-compile":
        model = torch.compile(model, fullgraph=True, dynamic=False)
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.no_grad(), torch.cuda.stream(stream):
        started = time.perf_counter()
        for _ in range(2):  # compiles (plain-compile) and initialises the libraries
            family.call(model, inputs)
        torch.cuda.synchronize(device)
        first_calls = time.perf_counter() - started
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            family.call(model, inputs)
    torch.cuda.current_stream(device).wait_stream(stream)
    figure = _time_variants({("local", None, 0): [graph]}, args.warmup, args.replays)
    (only,) = figure.values()
    only["first_calls_s"] = first_calls
    del graph
    torch.cuda.empty_cache()
    return {name: only for name in image_variants("single", args.image_steps, 0)}


def image_variants(mode: str, steps: int, warmup_steps: int) -> list[str]:
    """The variant each step of a ``steps``-step image replays, in order
    (``kind/previous kind/parity``, as the timed variants are named)."""
    names = []
    previous = None
    mode = "single" if mode in PLAIN else mode
    for step in range(steps):
        kind = step_kind(step, steps, mode, warmup_steps)
        names.append(f"{kind}/{previous}/{step % 2}")
        previous = kind
    return names


def image_bounds(report: dict, steps: int, warmup_steps: int) -> dict[str, dict]:
    """Per mode: the GPU time of a ``steps``-step image if communication cost nothing (each
    step timed as the variant it replays, on the slowest rank) and ``single``'s over it: the
    mode's compute-only bound on the speed-up. Modes whose variants were not all timed (a
    capturing image shorter than the warm-up plus 3 steps) are left out."""
    totals: dict[str, float] = {}
    for mode, ranks in report["modes"].items():
        names = image_variants(mode, steps, warmup_steps)
        per_rank = []
        for variants in ranks or []:
            if not variants or any(name not in variants for name in names):
                break
            per_rank.append(sum(variants[name]["ms"] for name in names))
        else:
            if per_rank:
                totals[mode] = max(per_rank)
    single = totals.get("single")
    references = {m: totals[m] for m in ("single", *PLAIN) if m in totals}
    fastest = min(references, key=references.__getitem__) if references else None
    bounds: dict[str, dict] = {}
    for mode, total in totals.items():
        bounds[mode] = {"image_ms": total, "vs_single": None if single is None else single / total}
        if fastest is not None and fastest != "single":
            bounds[mode]["vs_fastest"] = references[fastest] / total
            bounds[mode]["fastest"] = fastest
    return bounds


def _markdown(args, report: dict) -> str:
    lines = [
        f"# GPU time of one band's step alone ({args.arch}, {args.size} px, CFG batch 2, "
        f"{args.dtype}, {report['device']}; GroupNorm kernels: {report['norm_kernels']})",
        "",
        "CUDA-graph variants replayed back to back without MPI, one rank at a time; "
        f"mean of {args.replays} replays after {args.warmup}.",
        "",
        "| mode | rank | variant | graphs | ms per step |",
        "|---|---|---|---|---|",
    ]
    for mode, ranks in report["modes"].items():
        for rank, variants in enumerate(ranks):
            for name, figure in sorted((variants or {}).items()):
                lines.append(
                    f"| {mode} | {rank} | {name} | {figure['graphs']} | {figure['ms']:.3f} |"
                )
    bounds = report.get("bounds") or {}
    if bounds:
        lines += [
            "",
            f"Compute-only bound of a {args.image_steps}-step image ({args.warmup_steps} `sync` "
            "warm-up steps): each step timed as the variant it replays, slowest rank:",
            "",
            "| mode | image ms | `single` / mode | fastest one-GPU image / mode |",
            "|---|---|---|---|",
        ]
        for mode, bound in bounds.items():
            ratio = bound["vs_single"]
            shown = "—" if ratio is None else f"{ratio:.3f}x"
            fastest = bound.get("fastest", "single")
            best = bound.get("vs_fastest", ratio)
            best_shown = "—" if best is None else f"{best:.3f}x (`{fastest}`)"
            lines.append(f"| {mode} | {bound['image_ms']:.1f} | {shown} | {best_shown} |")
    profiled = [
        (mode, name, figure["profile"])
        for mode, ranks in report["modes"].items()
        for name, figure in sorted(((ranks or [None])[0] or {}).items())
        if figure.get("profile")
    ]
    if profiled:
        lines += [
            "",
            f"Kernels of rank 0's steady state ({PROFILE_REPLAYS} replays under torch.profiler; "
            "ms per step; idle = wall - union of kernels, short gaps = idle gaps under 20 us):",
            "",
            "| mode | variant | kernels | wall | busy | idle | short gaps | "
            + " | ".join(CATEGORY_COLUMNS)
            + " |",
            "|---|---|---|---|---|---|---|" + "---|" * len(CATEGORY_COLUMNS),
        ]
        for mode, name, p in profiled:
            cats = p["by_category_ms_per_step"]
            short = p["idle_gaps"][0]
            lines.append(
                f"| {mode} | {name} | {p['kernels'] / p['steps']:.0f} | "
                f"{p['window_ms_per_step']:.2f} | {p['busy_ms_per_step']:.2f} | "
                f"{p['idle_ms_per_step']:.2f} | {short['per_step']:.0f} / "
                f"{short['ms_per_step']:.2f} | "
                + " | ".join(f"{cats.get(c, 0.0):.2f}" for c in CATEGORY_COLUMNS)
                + " |"
            )
        lines += [
            "",
            "Idle time just before the kernels of each category (ms per step: what the GPU "
            "waited to start):",
            "",
            "| mode | variant | " + " | ".join(CATEGORY_COLUMNS) + " |",
            "|---|---|" + "---|" * len(CATEGORY_COLUMNS),
        ]
        for mode, name, p in profiled:
            before = p.get("idle_before_ms_per_step", {})
            lines.append(
                f"| {mode} | {name} | "
                + " | ".join(f"{before.get(c, 0.0):.2f}" for c in CATEGORY_COLUMNS)
                + " |"
            )
    return "\n".join(lines) + "\n"


SETTINGS = (
    "arch", "size", "steps", "warmup_steps", "image_steps", "ratio", "warmup", "replays", "dtype",
)  # fmt: skip


def merge_reports(reports: list[dict]) -> dict:
    """One report of the modes of ``reports`` (each measured by its own run of this tool),
    with the bounds recomputed. Raises ValueError when they were measured with other settings,
    on other GPUs, or name a mode twice."""
    if not reports:
        raise ValueError("no reports to merge")
    first = reports[0]
    merged = {key: first.get(key) for key in ("device", "ranks", "overrides", "norm_kernels")}
    merged["settings"] = first.get("settings")
    merged["modes"] = {}
    for report in reports:
        for key in ("settings", "device", "ranks", "overrides", "norm_kernels"):
            if report.get(key) != first.get(key):
                raise ValueError(
                    f"the reports differ in {key}: {report.get(key)!r} vs {first.get(key)!r}"
                )
        for mode, ranks in report["modes"].items():
            if mode in merged["modes"]:
                raise ValueError(f"mode {mode!r} is in more than one report")
            merged["modes"][mode] = ranks
    settings = merged["settings"] or {}
    if "image_steps" not in settings or "warmup_steps" not in settings:
        raise ValueError("the reports do not record their settings (measured by an older tool)")
    merged["bounds"] = image_bounds(merged, settings["image_steps"], settings["warmup_steps"])
    return merged


def _write(out: Path, args: argparse.Namespace, report: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "band_steps.json").write_text(json.dumps(report, indent=1))
    table = _markdown(args, report)
    (out / "band_steps.md").write_text(table)
    print(table, flush=True)


def _merge_main(args: argparse.Namespace) -> int:
    if (args.out / "band_steps.json").exists():
        print(f"bench_band_step: {args.out} already holds a report", file=sys.stderr)
        return 2
    try:
        reports = [json.loads(path.read_text()) for path in args.merge]
        merged = merge_reports(reports)
    except (OSError, ValueError, KeyError) as error:
        print(f"bench_band_step: cannot merge: {error}", file=sys.stderr)
        return 2
    _write(args.out, argparse.Namespace(**merged["settings"]), merged)
    return 0


def main(argv: list[str] | None = None) -> int:
    torch._dynamo.config.recompile_limit = 64  # one process compiles many cases' models
    args = _args(argv)
    if args.merge:
        return _merge_main(args)
    if not torch.cuda.is_available():
        print("bench_band_step: no CUDA device: it times CUDA graphs", file=sys.stderr)
        return 2
    world = MPI.COMM_WORLD
    rank = world.Get_rank()
    device = torch.device("cuda", rank % torch.cuda.device_count())
    torch.cuda.set_device(device)
    aware = bool(cuda_aware())
    bundle = load_model(_job(args, "single").model, DTYPES[args.dtype], device)
    report: dict = {
        "device": torch.cuda.get_device_name(device),
        "ranks": world.Get_size(),
        "overrides": args.overrides,
        "norm_kernels": (
            "inductor (compiled)"
            if compile_enabled(_job(args, "pcpp").runtime, device)
            else resolve_norm_kernels(_job(args, "pcpp").runtime.norm_kernels, device)
        ),
        "settings": {key: getattr(args, key) for key in SETTINGS},
    }
    report["modes"] = {}
    for mode in args.modes:
        if mode in PLAIN:
            figures = _measure_plain(args, mode, bundle, device) if rank == 0 else None
            world.Barrier()
            report["modes"][mode] = [figures] if rank == 0 else None
            continue
        if mode == "single":
            ranks_comm = MPI.COMM_SELF if rank == 0 else None
            figures = None
            if ranks_comm is not None:
                single = RankComm(ranks_comm, 1, cuda_aware=aware)
                figures = _measure(args, mode, single, bundle, device, MPI.COMM_SELF)
                single.free()
            world.Barrier()
            gathered = world.gather(figures, root=0)
            report["modes"][mode] = gathered[:1] if rank == 0 else None
            continue
        comm = RankComm(world, 1, cuda_aware=aware)
        figures = _measure(args, mode, comm, bundle, device, world)
        comm.free()
        report["modes"][mode] = world.gather(figures, root=0)
    if rank == 0:
        report["bounds"] = image_bounds(report, args.image_steps, args.warmup_steps)
        _write(args.out, args, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
