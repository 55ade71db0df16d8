"""Speed benchmark: the single-GPU baselines and the parallel modes, in one MPI job.

Run with one rank per GPU, e.g. on 2 GPUs::

    mpirun -np 2 python tools/bench.py --arch sdxl --sizes 1024 2048 --steps 50 --reps 3 \\
        --out bench-results/h200x2

``--arch``: the shipped ``tiny`` UNet or any architecture the config knows (the SD UNets,
``pixart-sigma``, ``sd3-medium``; random weights); the model family (UNet, PixArt or SD3
transformer) follows from it, or from a diffusers folder
(``--set model.builtin=null --set model.path=FOLDER``).
``--scheduler`` (``auto`` by default: ``flow-euler`` for a flow-matching model such as SD3,
``ddim`` otherwise) steps both the plain loops and the pcpp-mpi cases.

Cases (``--cases``):

- ``plain-eager`` / ``plain-graph``: a plain diffusers loop on one GPU without pcpp-mpi (the
  family's network on the CFG batch, guidance, one scheduler step), eager and with each
  network call replayed as one CUDA graph; ``plain-compile``: the same after
  ``torch.compile(network, fullgraph=True)`` (inductor), then one CUDA graph per call. The
  fastest single-GPU denoising loop (``plain-compile``, ``plain-graph`` or ``single``) is the
  reference of every speed-up. ``plain-graph-cl``: the same with the network's weights in
  channels-last memory format (4-D weights only: a UNet's convolutions, a transformer's patch
  embedding).
- ``single``: pcpp-mpi's ``single`` mode on rank 0 alone (the other ranks wait).
- ``sync``, ``distrifusion``, ``pcpp``, ``naive``: those modes on every rank; ``cfg``: ``sync``
  with ``cfg_parallel`` (two CFG groups).
- pcpp-mpi cases follow ``runtime.compile`` (compiled on a GPU); an ``-uncompiled`` suffix
  (e.g. ``pcpp-uncompiled``) runs a case with ``runtime.compile=false``, an ``-eager`` suffix
  with ``runtime.graphs=eager`` (and uncompiled).

Every pcpp-mpi case is one ``run_job`` (the path of ``pcpp-mpi run``, with tracing on, PNG
files off) over ``1 + --reps`` images of the same prompt and seed on a model loaded once: the
first image warms up (and captures the CUDA graphs), the median of the others is reported.
The *denoising loop* of an image is its ``denoise`` phase (slowest rank; it ends with the GPU
synchronised); *end to end* is rank 0's time from the start of ``denoise`` to the end of
``write`` (prompt encoding, denoising, gather, VAE decode, HDF5 write). Each case's run
directory (run.h5 and the rank files with the traces) is kept under ``--out/runs``.

``--staged`` passes host buffers to MPI even when the library is CUDA-aware; launched with
an MPI that is not CUDA-aware, the cases use host staging anyway. Results: ``results.json``,
``results.h5`` (each case's loop times as ``denoising_loop_s``, also reachable as
``unet_loop_s``, the name of results written before the transformer families) and
``results.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import mpi4py

mpi4py.rc.thread_level = "multiple"
import h5py  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from mpi4py import MPI  # noqa: E402

from pcpp_mpi.analysis.kernels import gap_bucket_label, profile_from_events  # noqa: E402
from pcpp_mpi.comm.context import RankComm  # noqa: E402
from pcpp_mpi.comm.mpi_info import cuda_aware  # noqa: E402
from pcpp_mpi.config import ConfigError, job_from_dict  # noqa: E402
from pcpp_mpi.config.arguments import add_settings_argument  # noqa: E402
from pcpp_mpi.config.schema import ArchName, JobConfig  # noqa: E402
from pcpp_mpi.engine.runner import DENOISE_RANGE, run_job  # noqa: E402
from pcpp_mpi.engine.schedulers import KNOWN, make_scheduler, resolve_scheduler  # noqa: E402
from pcpp_mpi.engine.setup import DTYPES  # noqa: E402
from pcpp_mpi.families import DenoiserFamily, StepInputs, denoiser_family  # noqa: E402
from pcpp_mpi.models import load_model  # noqa: E402
from pcpp_mpi.models.random_arch import measurement_model  # noqa: E402
from pcpp_mpi.output.rank_file import read_table  # noqa: E402

PROMPT = "a benchmark prompt"
GUIDANCE = 5.0
#: results.h5: each case's denoising-loop seconds per timed image, and the same dataset's name
#: in files written before the transformer families (kept as a hard link)
LOOP_KEY = "denoising_loop_s"
OLD_LOOP_KEY = "unet_loop_s"
#: the heading's name of each family's network
NETWORKS = {"unet": "UNet", "pixart": "PixArt transformer", "sd3": "SD3 transformer"}
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


def _args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", default="sdxl", choices=("tiny", *get_args(ArchName)))
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup-steps", type=int, default=4)
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--dtype", default="float16", choices=tuple(DTYPES))
    parser.add_argument(
        "--scheduler",
        default="auto",
        choices=KNOWN,
        help="every case's scheduler (auto: flow-euler for a flow-matching model, else ddim)",
    )
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
    args = parser.parse_args(argv)
    try:  # a bad --set, size or case setting: said before any model is loaded
        for size in args.sizes:
            for case in {Case("single"), *(Case(n) for n in args.cases if not Case(n).plain)}:
                _job(args, size, case, 1)
    except ConfigError as error:
        parser.error(str(error))
    return args


def _job(args: argparse.Namespace, size: int, case: Case, images: int) -> JobConfig:
    settings = {
        "model": measurement_model(args.arch),
        "generation": {
            "prompts": [PROMPT] * images,
            "height": size,
            "width": size,
            "steps": args.steps,
            "guidance_scale": GUIDANCE,
            "scheduler": args.scheduler,
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

    Denoising loop of an image: from the moment the *last* rank starts its ``denoise`` phase (so a
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


@dataclass(frozen=True)
class PlainImage:
    """One image of a :class:`PlainLoop` before its first step: its scheduler (timesteps set,
    on the host), those timesteps on the device and the initial latent ``(1, C, H, W)``
    float32."""

    scheduler: Any  # a diffusers scheduler
    device_timesteps: torch.Tensor  # (steps,)
    latent: torch.Tensor


@dataclass
class PlainLoop:
    """A plain diffusers denoising loop on one device, without pcpp-mpi: the family's network
    on the whole latent (the CFG batch when guided), guidance, one scheduler step.

    The network reads static inputs (``inputs``: its ``sample`` ``(B, C, H, W)`` global, B = 2
    with guidance, in the run's dtype, and its ``timestep`` 0-d on the device; the conditioning
    is the same every step), so its call can be captured as one CUDA graph: ``run`` calls it on
    them (eagerly, or ``replay``: a CUDA graph's replay returning its static output) and
    returns the prediction ``(B, C, H, W)``.
    """

    family: DenoiserFamily
    network: Callable[..., Any]  # the family's network, or it compiled
    inputs: StepInputs
    sample: torch.Tensor  # (B, C, H, W) global: inputs' latent
    timestep: torch.Tensor  # 0-d: inputs' timestep
    scheduler: str  # resolved (never "auto")
    scheduler_config: Mapping[str, Any]
    steps: int
    guidance_scale: float
    replay: Callable[[], torch.Tensor] | None = None

    @property
    def guided(self) -> bool:
        return self.guidance_scale > 1.0

    def call(self) -> torch.Tensor:
        """The network on the static inputs, eagerly: ``(B, C, H, W)`` global."""
        return self.family.call(self.network, self.inputs)

    def run(self) -> torch.Tensor:
        """The network on the static inputs, replayed when captured: ``(B, C, H, W)``."""
        return self.call() if self.replay is None else self.replay()

    def start(self, noise: torch.Tensor) -> PlainImage:
        """An image from ``noise`` ``(1, C, H, W)`` float32 on the device: a fresh scheduler
        with its timesteps set and the initial latent (``noise`` scaled by the scheduler's
        ``init_noise_sigma``, as the engine does)."""
        scheduler = make_scheduler(self.scheduler, self.scheduler_config)
        # host timesteps for the scheduler (no GPU sync per step), device ones for the network
        scheduler.set_timesteps(self.steps, device="cpu")
        device_timesteps = scheduler.timesteps.to(self.timestep.device)
        return PlainImage(scheduler, device_timesteps, noise * scheduler.init_noise_sigma)

    def denoise(self, image: PlainImage) -> torch.Tensor:
        """Every step of ``image``: its final latent ``(1, C, H, W)`` float32, global."""
        scheduler, latent = image.scheduler, image.latent
        for step, timestep in enumerate(scheduler.timesteps):
            model_in = torch.cat([latent, latent]) if self.guided else latent
            self.sample.copy_(scheduler.scale_model_input(model_in, timestep))
            self.timestep.copy_(image.device_timesteps[step])
            prediction = self.run().float()
            if self.guided:
                uncond, cond = prediction.chunk(2)
                prediction = uncond + self.guidance_scale * (cond - uncond)
            latent = scheduler.step(prediction, timestep, latent).prev_sample
        return latent


def plain_loop(
    job: JobConfig, bundle, device: torch.device, *, compiled: bool = False
) -> PlainLoop:
    """The plain loop of ``job`` (its model's family, size, steps, guidance, first prompt and
    negative prompt; its scheduler, ``auto`` resolved from ``bundle.scheduler_config``) on a
    loaded ``bundle``, running eagerly (``compiled``: the network ``torch.compile``'d first,
    ``fullgraph``, static shapes)."""
    generation = job.generation
    family = denoiser_family(job.model)
    dtype = DTYPES[job.runtime.dtype]
    scheduler = resolve_scheduler(generation.scheduler, bundle.scheduler_config)
    schedule = make_scheduler(scheduler, bundle.scheduler_config)
    schedule.set_timesteps(generation.steps, device="cpu")
    guided = generation.guidance_scale > 1.0
    negative = generation.negative_prompts[0] if generation.negative_prompts else ""
    prompts = [negative, generation.prompts[0]] if guided else [generation.prompts[0]]
    factor = bundle.vae_scale_factor
    channels = family.model_shape(job.model).latent_channels
    shape = (len(prompts), channels, generation.height // factor, generation.width // factor)
    sample = torch.randn(shape, device=device, dtype=dtype)
    timestep = schedule.timesteps[0].to(device)  # the schedule's dtype (float for flow)
    conditioning = family.conditioning(
        bundle, prompts, generation.height, generation.width, device, dtype
    )
    network = family.network(bundle)
    if compiled:
        network = torch.compile(network, fullgraph=True, dynamic=False)
    return PlainLoop(
        family=family,
        network=network,
        inputs=family.step_inputs(sample, timestep, conditioning),
        sample=sample,
        timestep=timestep,
        scheduler=scheduler,
        scheduler_config=bundle.scheduler_config,
        steps=generation.steps,
        guidance_scale=generation.guidance_scale,
    )


def _time_plain(
    job: JobConfig,
    reps: int,
    bundle,
    device,
    graph: bool,
    channels_last: bool = False,
    compiled: bool = False,
) -> tuple[list[float], float]:
    """:func:`plain_loop` of ``job`` on one GPU, ``1 + reps`` images, the first untimed
    (``graph``: each network call replayed as one CUDA graph; ``channels_last``: the network's
    weights in channels-last memory format, activations follow; ``compiled``: the network
    ``torch.compile``'d first). Returns the loop times and the seconds the warm-up calls took
    (compiling, with ``compiled``)."""
    network = denoiser_family(job.model).network(bundle)
    if channels_last:
        network.to(memory_format=torch.channels_last)
        try:
            return _time_plain(job, reps, bundle, device, graph)
        finally:
            network.to(memory_format=torch.contiguous_format)
    loop = plain_loop(job, bundle, device, compiled=compiled)
    warm_started = time.perf_counter()
    if graph:
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream), torch.no_grad():
            for _ in range(2):
                loop.call()
        torch.cuda.current_stream(device).wait_stream(stream)
        _sync(device)
        cuda_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(cuda_graph), torch.no_grad():
            static_out = loop.call()

        def replay() -> torch.Tensor:
            cuda_graph.replay()
            return static_out

        loop.replay = replay
    warm_seconds = time.perf_counter() - warm_started

    times = []
    noise_shape = (1, *loop.sample.shape[1:])
    with torch.no_grad():
        for rep in range(reps + 1):
            image = loop.start(torch.randn(noise_shape, device=device))
            _sync(device)
            start = time.perf_counter()
            loop.denoise(image)
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
    model_meta: dict[str, str] = {}
    for size_px in args.sizes:
        job = _job(args, size_px, Case("single"), 1)
        bundle = load_model(job.model, DTYPES[args.dtype], device)
        model_meta = {
            "family": denoiser_family(job.model).name,
            "scheduler": resolve_scheduler(job.generation.scheduler, bundle.scheduler_config),
        }
        for case in map(Case, args.cases):
            row: dict | None = None
            if case.plain:
                if rank == 0 and (args.device == "cuda" or case.name == "plain-eager"):
                    times, warm = _time_plain(
                        job,
                        args.reps,
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
        _write(args, results, size, aware, model_meta)
    return 0


def _meta(args: argparse.Namespace, size: int, aware: bool, model_meta: dict[str, str]) -> dict:
    """The settings of the whole job; ``model_meta``: the model's ``family`` and the
    ``scheduler`` every case ran (``auto`` resolved)."""
    return {
        "arch": args.arch,
        **model_meta,
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


def _write(
    args: argparse.Namespace,
    results: list[dict],
    size: int,
    aware: bool,
    model_meta: dict[str, str],
) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    meta = _meta(args, size, aware, model_meta)
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    with h5py.File(args.out / "results.h5", "w", locking=False) as file:
        for key, value in meta.items():
            # h5py stores Python str as variable-length UTF-8 (numpy unicode has no HDF5 type)
            file.attrs[key] = str(value) if isinstance(value, str) else value
        for r in results:
            group = file.create_group(f"{r['size']}/{r['case']}")
            group.attrs["ranks"] = r["ranks"]
            group.attrs["median_s"] = r["median"]
            loop = group.create_dataset(LOOP_KEY, data=r["times"])
            group[OLD_LOOP_KEY] = loop  # a hard link: readers of earlier results.h5 files
            if r.get("end_to_end"):
                group.create_dataset("end_to_end_s", data=r["end_to_end"])
                group.attrs["end_to_end_median_s"] = r["end_to_end_median"]
            if r.get("exposed_share") is not None:
                group.attrs["exposed_share"] = r["exposed_share"]
    network = NETWORKS.get(meta.get("family", ""), "network")
    lines = [
        f"# {args.arch} {network}, {args.steps} steps ({meta.get('scheduler')}), CFG batch 2, "
        f"{args.dtype}, {size} x {meta['device']}, CUDA-aware MPI: {aware}"
        f"{' (host-staged)' if meta['staged'] else ''}",
        "",
        "Median of the timed repetitions; speed-ups against the fastest single-GPU denoising "
        "loop (denoising loop) and against pcpp-mpi `single` (end to end).",
        "",
        "| size | case | ranks | denoising loop s | speed-up | exposed comm | end to end s "
        "| speed-up |",
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


def read_loop_times(group: h5py.Group) -> list[float]:
    """One case's denoising-loop seconds per timed image from its ``results.h5`` group
    (``SIZE/CASE``), written by this version (``denoising_loop_s``) or an earlier one
    (``unet_loop_s`` only)."""
    key = LOOP_KEY if LOOP_KEY in group else OLD_LOOP_KEY
    return [float(t) for t in group[key][()]]


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
