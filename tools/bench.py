"""Speed benchmark: the single-GPU baseline and the parallel modes in one MPI job.

Run with one rank per GPU, e.g. on 2 GPUs::

    mpirun -np 2 python tools/bench.py --arch sdxl --sizes 1024 2048 --steps 50 --reps 3 \\
        --out bench-results/h200x2

Every case times the denoising loop (UNet + guidance + scheduler, the latent kept sharded)
after one warm-up repetition; the median of ``--reps`` repetitions is reported. ``single``
runs on rank 0 alone (the other ranks wait), so every ratio comes from the same job on the
same GPUs. ``plain-eager`` and ``plain-graph`` are plain diffusers UNet loops on one GPU
without pcpp-mpi, eager and with each UNet call replayed as a CUDA graph: the fastest
single-GPU time is the reference for speed-ups. Results: ``results.json`` and ``results.md``
under ``--out``, and the rank traces of the last repetition of every case.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import mpi4py

mpi4py.rc.thread_level = "multiple"
import torch  # noqa: E402
from mpi4py import MPI  # noqa: E402

from pcpp_mpi.comm.context import RankComm  # noqa: E402
from pcpp_mpi.comm.mpi_info import cuda_aware  # noqa: E402
from pcpp_mpi.config import job_from_dict  # noqa: E402
from pcpp_mpi.engine.denoise import denoise_band  # noqa: E402
from pcpp_mpi.engine.setup import DTYPES, prepare_band_context  # noqa: E402
from pcpp_mpi.models import load_model  # noqa: E402

CASES = ("plain-eager", "plain-graph", "single", "sync", "distrifusion", "pcpp", "naive", "cfg")


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="sdxl", choices=("tiny", "sd15", "sd21", "sdxl"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup-steps", type=int, default=4)
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--dtype", default="float16", choices=tuple(DTYPES))
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--out", type=Path, required=True)
    return parser.parse_args()


def _job(args: argparse.Namespace, size: int, mode: str, cfg: bool):
    return job_from_dict(
        {
            "model": (
                {"builtin": "tiny"}
                if args.arch == "tiny"
                else {"arch": args.arch, "weights": "random", "seed": 0}
            ),
            "generation": {
                "prompts": ["a benchmark prompt"],
                "height": size,
                "width": size,
                "steps": args.steps,
                "guidance_scale": 5.0,
                "scheduler": "ddim",
                "seed": 0,
            },
            "runtime": {"dtype": args.dtype, "device": args.device, "check_finite": False},
            "parallel": {
                "mode": mode,
                "warmup_steps": args.warmup_steps,
                "ratio": args.ratio,
                "cfg_parallel": cfg,
            },
        }
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_band_loop(job, comm: RankComm, bundle, device, reps: int) -> list[float]:
    """Seconds per repetition of the whole denoising loop on this rank's band."""
    ctx = prepare_band_context(job, comm, bundle, device)
    times = []
    try:
        for rep in range(reps + 1):
            comm.world.Barrier()
            _sync(device)
            start = time.perf_counter()
            denoise_band(ctx, "a benchmark prompt", "", 0)
            _sync(device)
            comm.world.Barrier()
            if rep > 0:  # the first repetition warms up
                times.append(time.perf_counter() - start)
    finally:
        ctx.handle.remove()
    return times


def _time_plain(job, bundle, device, reps: int, graph: bool) -> list[float]:
    """A plain diffusers loop on one GPU: UNet on the CFG batch, guidance, DDIM step."""
    from pcpp_mpi.engine.schedulers import make_scheduler

    dtype = DTYPES[job.runtime.dtype]
    generation = job.generation
    factor = bundle.vae_scale_factor
    shape = (
        2,
        bundle.unet.config.in_channels,
        generation.height // factor,
        generation.width // factor,
    )
    embeddings = bundle.encoder.encode(["", "a benchmark prompt"])
    hidden = embeddings.hidden.to(device, dtype)
    added = bundle.added_cond_kwargs(embeddings.pooled, generation.height, generation.width)
    static_in = torch.randn(shape, device=device, dtype=dtype)
    static_t = torch.tensor(500, device=device)

    def unet_call() -> torch.Tensor:
        return bundle.unet(
            static_in, static_t, encoder_hidden_states=hidden, added_cond_kwargs=added
        ).sample

    runner = unet_call
    if graph:
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream), torch.no_grad():
            for _ in range(2):
                unet_call()
        torch.cuda.current_stream(device).wait_stream(stream)
        cuda_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(cuda_graph), torch.no_grad():
            static_out = unet_call()

        def runner() -> torch.Tensor:
            cuda_graph.replay()
            return static_out

    times = []
    with torch.no_grad():
        for rep in range(reps + 1):
            scheduler = make_scheduler("ddim", bundle.scheduler_config)
            scheduler.set_timesteps(generation.steps, device=device)
            latent = torch.randn(shape[1:], device=device).unsqueeze(0)
            _sync(device)
            start = time.perf_counter()
            for timestep in scheduler.timesteps:
                static_in.copy_(torch.cat([latent, latent]).to(dtype))
                static_t.copy_(timestep)
                out = runner().float()
                uncond, cond = out.chunk(2)
                guided = uncond + generation.guidance_scale * (cond - uncond)
                latent = scheduler.step(guided, timestep, latent).prev_sample
            _sync(device)
            if rep > 0:
                times.append(time.perf_counter() - start)
    return times


def main() -> int:
    args = _args()
    world = MPI.COMM_WORLD
    rank, size = world.Get_rank(), world.Get_size()
    aware = bool(cuda_aware())
    device = (
        torch.device(args.device, rank % max(torch.cuda.device_count(), 1))
        if args.device == "cuda"
        else torch.device("cpu")
    )
    if args.device == "cuda":
        torch.cuda.set_device(device)
    results = []
    for size_px in args.sizes:
        base = _job(args, size_px, "sync", False)
        bundle = load_model(base.model, DTYPES[args.dtype], device)
        for case in args.cases:
            times: list[float] = []
            if case in ("plain-eager", "plain-graph", "single"):
                if rank == 0:
                    if case == "single":
                        job = _job(args, size_px, "single", False)
                        comm = RankComm(MPI.COMM_SELF, 1, cuda_aware=aware)
                        times = _time_band_loop(job, comm, bundle, device, args.reps)
                        comm.free()
                    elif args.device == "cuda" or case == "plain-eager":
                        times = _time_plain(
                            base, bundle, device, args.reps, graph=case == "plain-graph"
                        )
                world.Barrier()
            else:
                if size == 1 or (case == "cfg" and size % 2):
                    continue
                mode = "sync" if case == "cfg" else case
                job = _job(args, size_px, mode, case == "cfg")
                comm = RankComm(world, 2 if case == "cfg" else 1, cuda_aware=aware)
                times = _time_band_loop(job, comm, bundle, device, args.reps)
                comm.free()
            if rank == 0 and times:
                row = {
                    "size": size_px,
                    "case": case,
                    "ranks": 1 if case.startswith(("plain", "single")) else size,
                    "times": times,
                    "median": statistics.median(times),
                }
                results.append(row)
                print(json.dumps(row), flush=True)
        del bundle
        if args.device == "cuda":
            torch.cuda.empty_cache()
    if rank == 0:
        _write(args, results, size, aware)
    return 0


def _write(args: argparse.Namespace, results: list[dict], size: int, aware: bool) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    meta = {
        "arch": args.arch,
        "steps": args.steps,
        "warmup_steps": args.warmup_steps,
        "ratio": args.ratio,
        "reps": args.reps,
        "dtype": args.dtype,
        "ranks": size,
        "device": device_name,
        "cuda_aware": aware,
        "mpi": MPI.Get_library_version().splitlines()[0].strip("\x00 "),
    }
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    lines = [
        f"# {args.arch} UNet loop, {args.steps} steps, CFG batch 2, {args.dtype}, "
        f"{size} x {device_name}, CUDA-aware MPI: {aware}",
        "",
        "| size | case | ranks | median s | speed-up vs fastest single |",
        "|---|---|---|---|---|",
    ]
    for size_px in sorted({r["size"] for r in results}):
        rows = [r for r in results if r["size"] == size_px]
        singles = [r["median"] for r in rows if r["ranks"] == 1]
        best = min(singles) if singles else None
        for r in rows:
            ratio = f"{best / r['median']:.2f}x" if best else "-"
            lines.append(
                f"| {size_px} | {r['case']} | {r['ranks']} | {r['median']:.3f} | {ratio} |"
            )
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
