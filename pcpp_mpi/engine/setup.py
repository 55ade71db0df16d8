"""Making a loaded model band-parallel for one job on one rank."""

from __future__ import annotations

from typing import Literal

import torch

from pcpp_mpi.comm.context import RankComm
from pcpp_mpi.config import JobConfig
from pcpp_mpi.engine.compile import (
    compile_enabled,
    compile_network,
    compiled_phases,
    use_cache_dir,
)
from pcpp_mpi.engine.denoise import BandContext
from pcpp_mpi.engine.graphs import StepGraphs
from pcpp_mpi.families import denoiser_family
from pcpp_mpi.models import ModelBundle
from pcpp_mpi.parallel.apply import BandOptions
from pcpp_mpi.parallel.band_norm import NormKernels, resolve_norm_kernels
from pcpp_mpi.parallel.clock import StepClock
from pcpp_mpi.plan.layout import RunLayout, plan_layout, unet_batch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def graph_backend(job: JobConfig, device: torch.device) -> Literal["cuda", "emulate", "eager"]:
    """How the network's calls run: CUDA graphs on a GPU unless ``runtime.graphs`` says
    otherwise."""
    setting = job.runtime.graphs
    if setting == "emulate":
        return "emulate"
    if setting == "auto" and device.type == "cuda":
        return "cuda"
    return "eager"


def prepare_band_context(
    job: JobConfig,
    comm: RankComm,
    bundle: ModelBundle,
    device: torch.device,
    layout: RunLayout | None = None,
    norm_kernels: NormKernels | None = None,
) -> BandContext:
    """Install the parallel layers for ``job`` on the network its model family denoises with
    (``bundle.denoiser``; undo with ``ctx.handle.remove()``) and return everything
    :func:`denoise_band` needs.
    ``norm_kernels``: ``runtime.norm_kernels`` already resolved (resolved here if None; a
    compiled run always takes inductor's)."""
    family = denoiser_family(job.model)
    if layout is None:
        n_ranks = comm.world.Get_size()
        layout = plan_layout(job, n_ranks, family.model_shape(job.model))
    clock = StepClock(layout.mode, job.generation.steps, job.parallel.warmup_steps)
    network = family.network(bundle)
    inventory = family.inventory_of(network, layout.latent_height, layout.latent_width)
    traced = compile_enabled(job.runtime, device)
    if traced:
        norm_kernels = "torch"
    options = BandOptions(
        mode=layout.mode,
        ratio=job.parallel.ratio,
        batch=unet_batch(job, layout),
        latent_halo_on_host=job.runtime.latent_halo_on_host,
        kv_frames=job.runtime.kv_frames,
        stats_per_step=job.runtime.stats_per_step,
        norm_kernels=norm_kernels or resolve_norm_kernels(job.runtime.norm_kernels, device),
        traced=traced,
    )
    handle = family.parallelize(network, inventory, comm, layout.bands, clock, options)
    compiled = None
    if traced:
        use_cache_dir(job.runtime.compile_cache)
        compiled = compile_network(network, job.runtime.compile_backend)
    return BandContext(
        job=job,
        comm=comm,
        bundle=bundle,
        family=family,
        bands=layout.bands,
        clock=clock,
        handle=handle,
        graphs=StepGraphs(
            network,
            family.call,
            comm.recorder,
            device,
            graph_backend(job, device),
            comm.deferred,
            compiled=compiled,
            compiled_phases=compiled_phases(layout.mode, job.runtime.compile_warmup),
        ),
        device=device,
        dtype=DTYPES[job.runtime.dtype],
        latent_height=layout.latent_height,
        latent_width=layout.latent_width,
        latent_channels=layout.latent_channels,
    )
