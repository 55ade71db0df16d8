"""Speed benchmark: the single-GPU baselines and the parallel modes, in one MPI job.

Run with one rank per GPU, e.g. on 2 GPUs::

    mpirun -np 2 python tools/bench.py --arch sdxl --sizes 1024 2048 --steps 50 --reps 3 \\
        --out bench-results/h200x2

Cases (``--cases``):

- ``plain-eager`` / ``plain-graph``: a plain diffusers loop on one GPU without pcpp-mpi (UNet on
  the CFG batch, guidance, DDIM step), eager and with each UNet call replayed as one CUDA
  graph; ``plain-compile``: the same after ``torch.compile(unet, fullgraph=True)`` (inductor),
  then one CUDA graph per call. The fastest single-GPU UNet loop (``plain-compile``,
  ``plain-graph`` or ``single``) is the reference of every speed-up.
  ``plain-graph-cl``: the same with the UNet's weights in channels-last memory format.
- ``single``: pcpp-mpi's ``single`` mode on rank 0 alone (the other ranks wait).
- ``sync``, ``distrifusion``, ``pcpp``, ``naive``: those modes on every rank; ``cfg``: ``sync``
  with ``cfg_parallel`` (two CFG groups).
- pcpp-mpi cases follow ``runtime.compile`` (compiled on a GPU); an ``-uncompiled`` suffix
  (e.g. ``pcpp-uncompiled``) runs a case with ``runtime.compile=false``, an ``-eager`` suffix
  with ``runtime.graphs=eager`` (and uncompiled).

Every pcpp-mpi case is one ``run_job`` (the path of ``pcpp-mpi run``, with tracing on, PNG
files off) over ``1 + --reps`` images of the same prompt and seed on a model loaded once: the
first image warms up (and captures the CUDA graphs), the median of the others is reported.
The *UNet loop* of an image is its ``denoise`` phase (slowest rank; it ends with the GPU
synchronised); *end to end* is rank 0's time from the start of ``denoise`` to the end of
``write`` (prompt encoding, denoising, gather, VAE decode, HDF5 write). Each case's run
directory (run.h5 and the rank files with the traces) is kept under ``--out/runs``.

``--staged`` passes host buffers to MPI even when the library is CUDA-aware; launched with
an MPI that is not CUDA-aware, the cases use host staging anyway. Results: ``results.json``,
``results.h5`` and ``results.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import mpi4py

mpi4py.rc.thread_level = "multiple"
import h5py  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from mpi4py import MPI  # noqa: E402

from pcpp_mpi.analysis.kernels import gap_bucket_label, profile_from_events  # noqa: E402
from pcpp_mpi.comm.context import RankComm  # noqa: E402
from pcpp_mpi.comm.mpi_info import cuda_aware  # noqa: E402
from pcpp_mpi.config import job_from_dict  # noqa: E402
from pcpp_mpi.config.arguments import add_settings_argument  # noqa: E402
from pcpp_mpi.engine.runner import DENOISE_RANGE, run_job  # noqa: E402
from pcpp_mpi.engine.setup import DTYPES  # noqa: E402
from pcpp_mpi.families.unet import added_cond_kwargs  # noqa: E402
from pcpp_mpi.models import load_model  # noqa: E402
from pcpp_mpi.models.random_arch import measurement_model  # noqa: E402
from pcpp_mpi.output.rank_file import read_table  # noqa: E402

PROMPT = "a benchmark prompt"
MODES = ("single", "sync", "distrifusion", "pcpp", "naive", "cfg")
CASES = (
    "plain-eager",
    "plain-graph",
    "plain-graph-cl",
    "plain-compile",
    *MODES,
    *(f"{m}-uncompiled" for m in MODES),
    *(f"{m}-eager" for m in MODES),
)
SUFFIXES = ("-eager", "-uncompiled")


@dataclass(frozen=True)
class Case:
    name: str

    @property
    def plain(self) -> bool:
        return self.name.startswith("plain-")

    @property
    def graphs(self) -> str:
        return "eager" if self.name.endswith("-eager") else "auto"

    @property
    def compiled(self) -> bool | None:
        """``False`` for an uncompiled case, ``None``: as ``runtime.compile`` says."""
        return False if self.name.endswith(SUFFIXES) else None

    @property
    def base(self) -> str:
        name = self.name
        for suffix in SUFFIXES:
            name = name.removesuffix(suffix)
        return name

    @property
    def mode(self) -> str:
        return "sync" if self.base == "cfg" else self.base

    @property
    def cfg(self) -> bool:
        return self.base == "cfg"

    @property
    def one_gpu(self) -> bool:
        return self.plain or self.mode == "single"


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", default="sdxl", choices=("tiny", "sd15", "sd21", "sdxl"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup-steps", type=int, default=4)
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--dtype", default="float16", choices=tuple(DTYPES))
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--staged", action="store_true", help="host buffers for MPI")
    add_settings_argument(parser, "runtime.latent_halo_on_host=false (every pcpp-mpi case)")
    parser.add_argument(
        "--profile",
        nargs="*",
        choices=CASES,
        metavar="CASE",
        help="after each pcpp-mpi case (or the cases named), one more run of 2 images under "
        "torch.profiler: GPU kernel time per step by category, busy and idle time of every "
        "rank (second image)",
    )
    parser.add_argument("--out", type=Path, required=True)
    return parser.parse_args()


def _job(args: argparse.Namespace, size: int, case: Case, images: int):
    settings = {
        "model": measurement_model(args.arch),
        "generation": {
            "prompts": [PROMPT] * images,
            "height": size,
            "width": size,
            "steps": args.steps,
            "guidance_scale": 5.0,
            "scheduler": "ddim",
            "seed": 0,
        },
        "runtime": {
            "dtype": args.dtype,
            "device": args.device,
            "check_finite": False,
            "trace": True,
            "graphs": case.graphs,
        },
        "parallel": {
            "mode": case.mode,
            "warmup_steps": args.warmup_steps,
            "ratio": args.ratio,
            "cfg_parallel": case.cfg,
        },
        "output": {"png": False},
    }
    for item in args.overrides:
        key, _, value = item.partition("=")
        *parents, leaf = key.split(".")
        node = settings
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = yaml.safe_load(value)
    if case.graphs == "eager":  # a "-eager" case stays eager whatever --set says
        settings["runtime"]["graphs"] = "eager"
    if case.compiled is False:  # "-eager" and "-uncompiled" cases are never compiled
        settings["runtime"]["compile"] = False
    return job_from_dict(settings)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _run_case(args, size: int, case: Case, world: MPI.Comm, bundle, aware: bool) -> dict | None:
    """One pcpp-mpi case through ``run_job``; rank 0 returns its figures."""
    comm_world = MPI.COMM_SELF if case.one_gpu else world
    job = _job(args, size, case, 1 + args.reps)
    run_dir = args.out / "runs" / f"{size}-{case.name}"
    comm = RankComm(comm_world, 2 if case.cfg else 1, cuda_aware=aware)
    try:
        run_job(job, comm, run_dir, overwrite=True, progress=False, bundle=bundle)
    finally:
        comm.free()
    profiled = args.profile is not None and (not args.profile or case.name in args.profile)
    profiles = _profile_case(args, size, case, comm_world, bundle, aware) if profiled else None
    if world.Get_rank() != 0:
        return None
    row = case_figures(run_dir, comm_world.Get_size(), range(1, 1 + args.reps))
    row["run_dir"] = str(run_dir)
    if profiles is not None:
        row["gpu_profile"] = profiles
    return row


def _profile_case(args, size: int, case: Case, comm_world: MPI.Comm, bundle, aware: bool):
    """Two images of ``case`` under torch.profiler; every rank's kernel summary of the second
    (graphs captured during the first), gathered on rank 0 of ``comm_world``."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if args.device == "cuda":
        activities.append(ProfilerActivity.CUDA)
    job = _job(args, size, case, 2)
    comm = RankComm(comm_world, 2 if case.cfg else 1, cuda_aware=aware)
    try:
        with profile(activities=activities) as prof:
            run_job(
                job,
                comm,
                args.out / "profile-runs" / f"{size}-{case.name}",
                overwrite=True,
                progress=False,
                bundle=bundle,
            )
    finally:
        comm.free()
    summary = profile_from_events(prof.events(), DENOISE_RANGE, args.steps)
    mine = None if summary is None else summary.to_dict()
    return comm_world.gather(mine, root=0)


def case_figures(run_dir: Path, n_ranks: int, timed: range) -> dict:
    """Figures of one case from its rank files (every rank's clock starts at a common barrier).

    UNet loop of an image: from the moment the *last* rank starts its ``denoise`` phase (so a
    rank's wait while rank 0 decodes and writes the previous image does not count) to the end
    of the slowest rank's. End to end: rank 0's start of ``denoise`` to its end of ``write``.
    Exposed communication share: time blocked in MPI over wall time, summed over the ranks'
    steps 1.. of the timed images (step 0 is left out: its first exchange also waits for the
    ranks to line up after the previous image).
    """
    starts: dict[int, list[float]] = {}
    ends: dict[int, list[float]] = {}
    first: dict[int, float] = {}
    written: dict[int, float] = {}
    exposed = wall = 0.0
    for rank in range(n_ranks):
        path = run_dir / f"rank-{rank:04d}.h5"
        for row in read_table(path, "phases"):
            image, name = int(row["image"]), str(row["name"])
            if name == "denoise":
                starts.setdefault(image, []).append(float(row["t_start"]))
                ends.setdefault(image, []).append(float(row["t_end"]))
                if rank == 0:
                    first[image] = float(row["t_start"])
            elif name == "write" and rank == 0:
                written[image] = float(row["t_end"])
        for row in read_table(path, "steps"):
            if int(row["image"]) in timed and int(row["step"]) > 0:
                exposed += float(row["exposed_comm"])
                wall += float(row["t_end"] - row["t_start"])
    return {
        "times": [max(ends[i]) - max(starts[i]) for i in timed],
        "end_to_end": [written[i] - first[i] for i in timed] if written else [],
        "exposed_share": exposed / wall if wall > 0 else None,
    }


def _time_plain(
    args,
    size: int,
    bundle,
    device,
    graph: bool,
    channels_last: bool = False,
    compiled: bool = False,
) -> tuple[list[float], float]:
    """A plain diffusers loop on one GPU: UNet on the CFG batch, guidance, DDIM step
    (``channels_last``: UNet weights in channels-last memory format; activations follow;
    ``compiled``: the UNet ``torch.compile``'d first). Returns the loop times and the seconds
    the warm-up calls took (compiling, with ``compiled``)."""
    if channels_last:
        bundle.denoiser.to(memory_format=torch.channels_last)
        try:
            return _time_plain(args, size, bundle, device, graph)
        finally:
            bundle.denoiser.to(memory_format=torch.contiguous_format)
    from pcpp_mpi.engine.schedulers import make_scheduler

    dtype = DTYPES[args.dtype]
    factor = bundle.vae_scale_factor
    shape = (2, bundle.denoiser.config.in_channels, size // factor, size // factor)
    embeddings = bundle.encoder.encode(["", PROMPT])
    hidden = embeddings.hidden.to(device, dtype)
    added = added_cond_kwargs(bundle.denoiser, embeddings.pooled, size, size)
    static_in = torch.randn(shape, device=device, dtype=dtype)
    static_t = torch.tensor(500, device=device)

    model = (
        torch.compile(bundle.denoiser, fullgraph=True, dynamic=False)
        if compiled
        else bundle.denoiser
    )

    def unet_call() -> torch.Tensor:
        return model(
            static_in, static_t, encoder_hidden_states=hidden, added_cond_kwargs=added
        ).sample

    runner = unet_call
    warm_started = time.perf_counter()
    if graph:
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream), torch.no_grad():
            for _ in range(2):
                unet_call()
        torch.cuda.current_stream(device).wait_stream(stream)
        _sync(device)
        cuda_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(cuda_graph), torch.no_grad():
            static_out = unet_call()

        def runner() -> torch.Tensor:
            cuda_graph.replay()
            return static_out

    warm_seconds = time.perf_counter() - warm_started

    times = []
    with torch.no_grad():
        for rep in range(args.reps + 1):
            scheduler = make_scheduler("ddim", bundle.scheduler_config)
            # host timesteps for the scheduler (no GPU sync per step), device ones for the UNet
            scheduler.set_timesteps(args.steps, device="cpu")
            unet_timesteps = scheduler.timesteps.to(device)
            latent = torch.randn(shape[1:], device=device).unsqueeze(0)
            _sync(device)
            start = time.perf_counter()
            for step, timestep in enumerate(scheduler.timesteps):
                static_in.copy_(torch.cat([latent, latent]).to(dtype))
                static_t.copy_(unet_timesteps[step])
                out = runner().float()
                uncond, cond = out.chunk(2)
                guided = uncond + 5.0 * (cond - uncond)
                latent = scheduler.step(guided, timestep, latent).prev_sample
            _sync(device)
            if rep > 0:
                times.append(time.perf_counter() - start)
    return times, warm_seconds


def main() -> int:
    torch._dynamo.config.recompile_limit = 64  # one process compiles many cases' models
    args = _args()
    world = MPI.COMM_WORLD
    rank, size = world.Get_rank(), world.Get_size()
    aware = bool(cuda_aware()) and not args.staged
    device = (
        torch.device(args.device, rank % max(torch.cuda.device_count(), 1))
        if args.device == "cuda"
        else torch.device("cpu")
    )
    if args.device == "cuda":
        torch.cuda.set_device(device)
    results = []
    for size_px in args.sizes:
        model = _job(args, size_px, Case("single"), 1).model
        bundle = load_model(model, DTYPES[args.dtype], device)
        for case in map(Case, args.cases):
            row: dict | None = None
            if case.plain:
                if rank == 0 and (args.device == "cuda" or case.name == "plain-eager"):
                    times, warm = _time_plain(
                        args,
                        size_px,
                        bundle,
                        device,
                        graph=case.name.startswith(("plain-graph", "plain-compile")),
                        channels_last=case.name.endswith("-cl"),
                        compiled=case.name == "plain-compile",
                    )
                    row = {"times": times, "warmup_s": warm}
                world.Barrier()
            elif case.one_gpu:
                if rank == 0:
                    row = _run_case(args, size_px, case, world, bundle, aware)
                world.Barrier()
            else:
                if size == 1 or (case.cfg and size % 2):
                    continue
                row = _run_case(args, size_px, case, world, bundle, aware)
            if rank == 0 and row is not None:
                row.update(
                    size=size_px,
                    case=case.name,
                    ranks=1 if case.one_gpu else size,
                    median=statistics.median(row["times"]),
                )
                if row.get("end_to_end"):
                    row["end_to_end_median"] = statistics.median(row["end_to_end"])
                results.append(row)
                print(json.dumps(row), flush=True)
        del bundle
        if args.device == "cuda":
            torch.cuda.empty_cache()
    if rank == 0:
        _write(args, results, size, aware)
    return 0


def _meta(args: argparse.Namespace, size: int, aware: bool) -> dict:
    return {
        "arch": args.arch,
        "steps": args.steps,
        "warmup_steps": args.warmup_steps,
        "ratio": args.ratio,
        "reps": args.reps,
        "dtype": args.dtype,
        "ranks": size,
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
        "cuda_aware": aware,
        "staged": args.device == "cuda" and (args.staged or not aware),
        "mpi": MPI.Get_library_version().splitlines()[0].strip("\x00 "),
        "torch": torch.__version__,
    }


def _write(args: argparse.Namespace, results: list[dict], size: int, aware: bool) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    meta = _meta(args, size, aware)
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    with h5py.File(args.out / "results.h5", "w", locking=False) as file:
        for key, value in meta.items():
            # h5py stores Python str as variable-length UTF-8 (numpy unicode has no HDF5 type)
            file.attrs[key] = str(value) if isinstance(value, str) else value
        for r in results:
            group = file.create_group(f"{r['size']}/{r['case']}")
            group.attrs["ranks"] = r["ranks"]
            group.attrs["median_s"] = r["median"]
            group.create_dataset("unet_loop_s", data=r["times"])
            if r.get("end_to_end"):
                group.create_dataset("end_to_end_s", data=r["end_to_end"])
                group.attrs["end_to_end_median_s"] = r["end_to_end_median"]
            if r.get("exposed_share") is not None:
                group.attrs["exposed_share"] = r["exposed_share"]
    lines = [
        f"# {args.arch} UNet, {args.steps} steps, CFG batch 2, {args.dtype}, {size} x "
        f"{meta['device']}, CUDA-aware MPI: {aware}{' (host-staged)' if meta['staged'] else ''}",
        "",
        "Median of the timed repetitions; speed-ups against the fastest single-GPU UNet loop "
        "(UNet loop) and against pcpp-mpi `single` (end to end).",
        "",
        "| size | case | ranks | UNet loop s | speed-up | exposed comm | end to end s | speed-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for size_px in sorted({r["size"] for r in results}):
        rows = [r for r in results if r["size"] == size_px]
        singles = [r["median"] for r in rows if r["ranks"] == 1]
        best = min(singles) if singles else None
        single_e2e = next((r.get("end_to_end_median") for r in rows if r["case"] == "single"), None)
        for r in rows:
            speed = f"{best / r['median']:.2f}x" if best else "-"
            exposed = r.get("exposed_share")
            e2e = r.get("end_to_end_median")
            lines.append(
                f"| {size_px} | {r['case']} | {r['ranks']} | {r['median']:.3f} | {speed} | "
                + (f"{100 * exposed:.1f}%" if exposed is not None else "-")
                + " | "
                + (f"{e2e:.3f}" if e2e else "-")
                + " | "
                + (f"{single_e2e / e2e:.2f}x" if e2e and single_e2e else "-")
                + " |"
            )
    lines.extend(_profile_lines(results))
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


LONG_GAP_BUCKETS = tuple(gap_bucket_label(i) for i in (2, 3))  # gaps of 200 us or more
PROFILE_COLUMNS = ("attention", "gemm", "convolution", "normalisation", "copy", "elementwise")


def _profile_lines(results: list[dict]) -> list[str]:
    """Markdown table of the ``--profile`` summaries (ms per step, second profiled image)."""
    rows = [r for r in results if r.get("gpu_profile")]
    if not rows:
        return []
    lines = [
        "",
        "GPU kernel time per step (torch.profiler, second image of a separate 2-image run; "
        "idle = wall - union of kernels; long gaps = idle gaps of 200 us or more, per step: "
        "count and ms):",
        "",
        "| size | case | rank | wall ms | busy ms | idle | long gaps | "
        + " | ".join(PROFILE_COLUMNS)
        + " | other |",
        "|---|---|---|---|---|---|---|" + "---|" * (len(PROFILE_COLUMNS) + 1),
    ]
    for r in rows:
        for rank, p in enumerate(r["gpu_profile"]):
            if p is None:
                continue
            cats = p["by_category_ms_per_step"]
            other = sum(v for k, v in cats.items() if k not in PROFILE_COLUMNS)
            long_gaps = [g for g in p.get("idle_gaps", []) if g["bucket"] in LONG_GAP_BUCKETS]
            lines.append(
                f"| {r['size']} | {r['case']} | {rank} | {p['window_ms_per_step']:.2f} | "
                f"{p['busy_ms_per_step']:.2f} | {100 * p['idle_share']:.1f}% | "
                f"{sum(g['per_step'] for g in long_gaps):.1f} / "
                f"{sum(g['ms_per_step'] for g in long_gaps):.2f} | "
                + " | ".join(f"{cats.get(c, 0.0):.2f}" for c in PROFILE_COLUMNS)
                + f" | {other:.2f} |"
            )
    return lines


if __name__ == "__main__":
    sys.exit(main())
