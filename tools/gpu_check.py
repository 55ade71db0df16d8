"""Correctness on the GPU machine: every mode against ``single`` and bytes against ``plan``.

Run with one rank per GPU::

    mpirun -np 2 python tools/gpu_check.py --arch sdxl --size 1024 --steps 4 --out gpu-check

For each mode the final latent (gathered to rank 0) is compared with a ``single`` run on
rank 0, and every rank's bytes per step and kind with :class:`pcpp_mpi.plan.report.JobPlan`.
``sync`` (and the all-warm displaced modes) must match ``single`` within half-precision
rounding; the measured difference is printed and written to ``check.json``. The runs follow
``runtime.compile`` (compiled on a GPU; ``--set runtime.compile=false`` for the uncompiled
path), ``single`` included.

Every case runs twice, eagerly and with its network calls (UNet or transformer) replayed as
CUDA graphs (``runtime.graphs``), and the two latents are compared with each other too.
``--staged`` passes host buffers to MPI (the path for an MPI that is not CUDA-aware) even when
the library is CUDA-aware.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import get_args

import mpi4py

mpi4py.rc.thread_level = "multiple"
import torch  # noqa: E402
from mpi4py import MPI  # noqa: E402

from pcpp_mpi.comm.context import RankComm  # noqa: E402
from pcpp_mpi.comm.mpi_info import cuda_aware  # noqa: E402
from pcpp_mpi.config import ConfigError, job_from_dict  # noqa: E402
from pcpp_mpi.config.arguments import add_settings_argument  # noqa: E402
from pcpp_mpi.config.schema import ArchName  # noqa: E402
from pcpp_mpi.engine.compile import compile_enabled  # noqa: E402
from pcpp_mpi.engine.denoise import denoise_band  # noqa: E402
from pcpp_mpi.engine.setup import DTYPES, prepare_band_context  # noqa: E402
from pcpp_mpi.engine.streams import compute_stream  # noqa: E402
from pcpp_mpi.models import load_model  # noqa: E402
from pcpp_mpi.models.random_arch import measurement_model  # noqa: E402
from pcpp_mpi.parallel.band_norm import resolve_norm_kernels  # noqa: E402
from pcpp_mpi.planning import make_plan  # noqa: E402

CASES = {
    "sync": {"mode": "sync"},
    "distrifusion-warm": {"mode": "distrifusion", "warmup_steps": "all"},
    "pcpp-r1-warm": {"mode": "pcpp", "ratio": 1.0, "warmup_steps": "all"},
    "cfg-sync": {"mode": "sync", "cfg_parallel": True},
    "distrifusion": {"mode": "distrifusion"},
    "pcpp": {"mode": "pcpp"},
    "naive": {"mode": "naive"},
}


def _job(args: argparse.Namespace, settings: dict, graphs: str = "auto"):
    parallel = {"mode": "sync", "warmup_steps": 1, "ratio": 0.3, "cfg_parallel": False}
    parallel.update(settings)
    if parallel["warmup_steps"] == "all":
        parallel["warmup_steps"] = args.steps
    return job_from_dict(
        {
            "model": measurement_model(args.arch),
            "generation": {
                "prompts": ["a check prompt"],
                "height": args.size,
                "width": args.size,
                "steps": args.steps,
                "guidance_scale": 5.0,
            },
            "runtime": {
                "dtype": args.dtype,
                "device": args.device,
                "check_finite": True,
                "graphs": graphs,
            },
            "parallel": parallel,
        },
        args.overrides,
    )


def _run(job, comm: RankComm, bundle, device) -> torch.Tensor | None:
    with compute_stream(device, job.runtime.compute_stream):
        ctx = prepare_band_context(job, comm, bundle, device)
        try:
            comm.counter.drain()
            latent = denoise_band(ctx, "a check prompt", "", 0)
            full = None
            if comm.topology.cfg_index == 0:
                rows = [b.rows for b in ctx.bands]
                full = comm.gather_bands(job.generation.steps - 1, latent.float(), rows)
            return full
        finally:
            ctx.handle.remove()


def main() -> int:
    torch._dynamo.config.recompile_limit = 64  # one process compiles many cases' models
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="sdxl", choices=("tiny", *get_args(ArchName)))
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--staged", action="store_true", help="host buffers for MPI")
    parser.add_argument("--dtype", default="float16", choices=tuple(DTYPES))
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--cases", nargs="+", choices=tuple(CASES), default=list(CASES))
    parser.add_argument(
        "--graphs",
        choices=("both", "auto", "eager"),
        default="both",
        help="run each case eagerly and with CUDA graphs (both), or one of them",
    )
    add_settings_argument(parser, "runtime.norm_kernels=torch (every case)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    try:
        _job(args, {})
    except ConfigError as error:
        parser.error(str(error))

    world = MPI.COMM_WORLD
    rank, size = world.Get_rank(), world.Get_size()
    aware = bool(cuda_aware()) and not args.staged
    if args.device == "cuda":
        device = torch.device("cuda", rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    base = _job(args, {})
    bundle = load_model(base.model, DTYPES[args.dtype], device)

    reference = None
    if rank == 0:
        single = RankComm(MPI.COMM_SELF, 1, cuda_aware=aware)
        reference = _run(_job(args, {"mode": "single"}), single, bundle, device)
        single.free()
    world.Barrier()
    report = {
        "cuda_aware": aware,
        "ranks": size,
        "arch": args.arch,
        "size": args.size,
        "steps": args.steps,
        "dtype": args.dtype,
        "staged": args.staged,
        "overrides": args.overrides,
        "norm_kernels": (
            "inductor (compiled)"
            if compile_enabled(base.runtime, device)
            else resolve_norm_kernels(base.runtime.norm_kernels, device)
        ),
        "compiled": compile_enabled(base.runtime, device),
        "cases": {},
    }
    eager_latents: dict[str, torch.Tensor] = {}
    variants = ("eager", "auto") if args.graphs == "both" else (args.graphs,)
    for name, settings, graphs in [(n, CASES[n], g) for n in args.cases for g in variants]:
        job = _job(args, settings, graphs)
        groups = 2 if job.parallel.cfg_parallel else 1
        if size % groups:
            continue
        comm = RankComm(world, groups, cuda_aware=aware)
        full = _run(job, comm, bundle, device)
        plan = make_plan(job, size)
        mismatches = []
        measured = {(s, k): (a, b) for (_, s, k, a, b) in comm.counter.drain()}
        for step in range(job.generation.steps):
            traffic = plan.step_traffic(rank, plan.layout.mode, step)
            for kind in set(traffic.sent) | set(traffic.received):
                want = (traffic.sent.get(kind, 0), traffic.received.get(kind, 0))
                if measured.get((step, kind)) != want:
                    mismatches.append((step, kind, measured.get((step, kind)), want))
        all_mismatches = world.gather(mismatches, root=0)
        comm.free()
        if rank == 0:
            assert reference is not None and full is not None
            diff = float((full - reference).abs().max())
            scale = float(reference.abs().max())
            bad = [m for ms in all_mismatches for m in ms if m[1] != "gather"]
            entry = {
                "max_abs_diff": diff,
                "latent_scale": scale,
                "relative": diff / scale,
                "byte_mismatches": len(bad),
            }
            label = f"{name}/{'graphs' if graphs == 'auto' else 'eager'}"
            line = f"{label:25s} vs single: max|diff| {diff:.3e} rel {diff / scale:.2e}"
            if graphs == "eager":
                eager_latents[name] = full
            elif name in eager_latents:
                vs_eager = float((full - eager_latents[name]).abs().max())
                entry["graphs_vs_eager_max_abs_diff"] = vs_eager
                line += f"  vs eager: {vs_eager:.3e}"
            report["cases"][label] = entry
            print(
                line + f"  bytes {'== plan' if not bad else f'{len(bad)} mismatches: {bad[:3]}'}",
                flush=True,
            )
    if rank == 0:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "check.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
