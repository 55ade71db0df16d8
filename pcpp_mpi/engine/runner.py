"""A whole job on one rank: checks, model, parallel layers, images, outputs.

Errors found before the denoising starts (configuration, geometry, run directory, model) are
agreed on by all ranks, so every rank exits with the same message and nothing hangs. An error
during denoising aborts the whole MPI job (other ranks may be blocked in MPI calls).
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from pcpp_mpi.comm.context import RankComm
from pcpp_mpi.comm.mpi_info import cuda_aware, describe_world
from pcpp_mpi.config import JobConfig, job_to_yaml
from pcpp_mpi.engine.decode import latent_to_image
from pcpp_mpi.engine.denoise import BandContext, denoise_band
from pcpp_mpi.engine.layout import RunLayout, plan_layout
from pcpp_mpi.models import load_model, unet_config, vae_scale_factor
from pcpp_mpi.output import RunFile, prepare_run_dir, write_png
from pcpp_mpi.output.provenance import collect_package_versions, git_revision
from pcpp_mpi.output.rank_file import RankFile, rank_file_name
from pcpp_mpi.parallel.apply import parallelize
from pcpp_mpi.parallel.clock import StepClock
from pcpp_mpi.parallel.inventory import inventory_of

log = logging.getLogger("pcpp_mpi")

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class JobError(RuntimeError):
    """A problem every rank agreed on before denoising; its message is for the user."""


@dataclass(frozen=True)
class RunResult:
    run_file: Path
    layout: RunLayout


def agree(comm: RankComm, error: str | None) -> None:
    """Raise JobError on every rank if any rank reports an error (the lowest rank's wins)."""
    errors = comm.allgather(error)
    for rank, message in enumerate(errors):
        if message is not None:
            same = all(e == message for e in errors)
            raise JobError(message if same else f"[rank {rank}] {message}")


def _attempt(action: Callable[[], object]) -> tuple[object, str | None]:
    try:
        return action(), None
    except (ValueError, RuntimeError, OSError) as exc:
        return None, str(exc)


def compute_device(job: JobConfig, comm: RankComm) -> torch.device:
    if job.runtime.device == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("runtime.device: 'cuda' requested but torch sees no CUDA device")
    return torch.device("cuda", comm.local_rank() % torch.cuda.device_count())


def run_job(
    job: JobConfig,
    comm: RankComm,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> RunResult:
    """Run ``job`` on this rank; every rank of ``comm.world`` calls it together."""
    rank = comm.world.Get_rank()
    n_ranks = comm.world.Get_size()

    layout, error = _attempt(
        lambda: plan_layout(job, n_ranks, unet_config(job.model), vae_scale_factor(job.model))
    )
    agree(comm, error)
    assert isinstance(layout, RunLayout)
    config_yaml = job_to_yaml(job)
    digests = comm.allgather(config_yaml)
    if any(d != digests[0] for d in digests):
        differing = [r for r, d in enumerate(digests) if d != digests[0]]
        raise JobError(f"ranks {differing} loaded a different job configuration than rank 0")

    run_dir = None
    error = None
    if rank == 0:
        run_dir, error = _attempt(lambda: prepare_run_dir(out_dir, overwrite))
    agree(comm, error)
    run_dir = Path(comm.bcast(str(run_dir) if rank == 0 else None))

    device, error = _attempt(lambda: compute_device(job, comm))
    agree(comm, error)
    assert isinstance(device, torch.device)
    dtype = DTYPES[job.runtime.dtype]
    if layout.mode != job.parallel.mode and rank == 0:
        log.info("one band: running as 'single' (the job asks for %r)", job.parallel.mode)
    log.info(
        "%d rank(s): %d band(s) x %d CFG group(s), mode %s, latent %dx%d, bands %s",
        n_ranks,
        layout.n_bands,
        layout.cfg_groups,
        layout.mode,
        layout.latent_height,
        layout.latent_width,
        [b.rows for b in layout.bands],
    )
    bundle, error = _attempt(lambda: load_model(job.model, dtype, device))
    agree(comm, error)

    world_info = describe_world(comm.world)
    clock = StepClock(layout.mode, job.generation.steps, job.parallel.warmup_steps)
    inventory = inventory_of(bundle.unet, layout.latent_height, layout.latent_width)
    guided = job.generation.guidance_scale > 1.0
    batch = 2 if guided and layout.cfg_groups == 1 else 1
    handle = parallelize(
        bundle.unet,
        inventory,
        comm,
        layout.bands,
        clock,
        mode=layout.mode,
        ratio=job.parallel.ratio,
        batch=batch,
    )
    ctx = BandContext(
        job=job,
        comm=comm,
        bundle=bundle,
        bands=layout.bands,
        clock=clock,
        handle=handle,
        device=device,
        dtype=dtype,
        latent_height=layout.latent_height,
        latent_width=layout.latent_width,
    )
    topology = comm.topology
    rank_file = RankFile(
        run_dir / rank_file_name(rank),
        {
            "rank": rank,
            "n_ranks": n_ranks,
            "band_index": topology.band_index,
            "cfg_index": topology.cfg_index,
            "band_start": ctx.band.start,
            "band_stop": ctx.band.stop,
        },
    )
    run_file = None
    if rank == 0:
        provenance = {
            "mpi": world_info.to_provenance(),
            "cuda_aware": cuda_aware(),
            "n_ranks": n_ranks,
            "mode": layout.mode,
            "bands": [[b.start, b.stop] for b in layout.bands],
            "packages": collect_package_versions(),
            "git_revision": git_revision() or "unknown",
        }
        run_file = RunFile.create(
            run_dir / "run.h5",
            config_yaml=config_yaml,
            provenance=provenance,
            n_ranks=n_ranks,
            rank_files=[rank_file_name(r) for r in range(n_ranks)],
        )
    try:
        _generate_all(ctx, layout, run_file, rank_file, run_dir, progress)
        if run_file is not None:
            run_file.set_status("complete")
    except BaseException as exc:
        _fail(comm, run_file, exc)
        raise
    finally:
        rank_file.close()
        if run_file is not None:
            run_file.close()
        handle.remove()
    return RunResult(run_dir / "run.h5", layout)


def _generate_all(
    ctx: BandContext,
    layout: RunLayout,
    run_file: RunFile | None,
    rank_file: RankFile,
    run_dir: Path,
    progress: bool,
) -> None:
    job = ctx.job
    generation = job.generation
    comm = ctx.comm
    show = progress and comm.world.Get_rank() == 0
    for index, prompt in enumerate(generation.prompts):
        negatives = generation.negative_prompts
        negative = negatives[index] if len(negatives) > 1 else negatives[0]
        seed = generation.seed + index
        comm.counter.begin_image(index)
        bar = _progress_bar(generation.steps, f"image {index + 1}/{len(generation.prompts)}", show)
        latent = denoise_band(
            ctx, prompt, negative, seed, on_step=lambda _s, bar=bar: bar.update(1)
        )
        bar.close()
        full = None
        if comm.topology.cfg_index == 0:
            full = comm.gather_bands(generation.steps - 1, latent, [b.rows for b in layout.bands])
        rank_file.append_traffic([row for row in comm.counter.as_rows() if row[0] == index])
        if run_file is not None:
            assert full is not None
            image = latent_to_image(ctx.bundle, full.to(ctx.device))
            run_file.add_latent(index, full[0].numpy())
            run_file.add_image(index, image, prompt, seed)
            if job.output.png:
                write_png(run_dir / f"image-{index:04d}.png", image)
            log.info("image %d written (seed %d)", index, seed)


def _progress_bar(total: int, description: str, show: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="step", disable=not show, file=sys.stderr)


def _fail(comm: RankComm, run_file: RunFile | None, exc: BaseException) -> None:
    """Record the failure; with other ranks alive, end the whole job (they may be blocked)."""
    rank = comm.world.Get_rank()
    status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
    message = f"{type(exc).__name__}: {exc}"
    if run_file is not None and not run_file.closed:
        try:
            run_file.set_status(status, error=f"rank {rank}: {message}")
        finally:
            run_file.close()
    if comm.world.Get_size() > 1:
        sys.stderr.write(f"[rank {rank}] error: {message}\n")
        traceback.print_exc(file=sys.stderr)
        sys.stderr.flush()
        comm.abort(1)
