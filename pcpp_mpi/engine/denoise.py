"""One image, denoised with the latent kept sharded: each rank steps its own band."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from pcpp_mpi.comm.context import RankComm
from pcpp_mpi.config.schema import JobConfig
from pcpp_mpi.engine.graphs import StepGraphs
from pcpp_mpi.engine.schedulers import make_scheduler
from pcpp_mpi.families.base import DenoiserFamily
from pcpp_mpi.geometry import Band
from pcpp_mpi.models.bundle import ModelBundle
from pcpp_mpi.parallel.apply import ParallelHandle
from pcpp_mpi.parallel.clock import StepClock


@dataclass
class BandContext:
    """Everything one rank needs to denoise its band; made once per run."""

    job: JobConfig
    comm: RankComm
    bundle: ModelBundle
    family: DenoiserFamily
    bands: tuple[Band, ...]
    clock: StepClock
    handle: ParallelHandle
    graphs: StepGraphs
    device: torch.device
    dtype: torch.dtype
    latent_height: int
    latent_width: int
    latent_channels: int

    @property
    def band(self) -> Band:
        return self.bands[self.comm.topology.band_index]

    @property
    def guided(self) -> bool:
        return self.job.generation.guidance_scale > 1.0

    @property
    def cfg_parallel(self) -> bool:
        return self.comm.topology.cfg_groups == 2


class StepHooks(Protocol):
    """Called around every denoising step (tracing, progress, stop checks)."""

    def begin(self, step: int, kind: str) -> None: ...

    def end(self, step: int, latent: torch.Tensor) -> None: ...


def initial_noise(seed: int, channels: int, height: int, width: int) -> torch.Tensor:
    """The whole image's noise ``(1, C, H, W)`` float32 from a CPU generator seeded ``seed``.

    Every rank draws the full tensor and keeps its rows, so results do not depend on the rank
    count.
    """
    generator = torch.Generator("cpu").manual_seed(seed)
    return torch.randn((1, channels, height, width), generator=generator, dtype=torch.float32)


@torch.no_grad()
def denoise_band(
    ctx: BandContext,
    prompt: str,
    negative_prompt: str,
    seed: int,
    hooks: StepHooks | None = None,
) -> torch.Tensor:
    """Run every denoising step on this rank's band; returns its final latent
    ``(1, C, rows, W)`` float32 on the compute device (local: this band only)."""
    job = ctx.job
    generation = job.generation
    bundle = ctx.bundle
    topology = ctx.comm.topology
    scheduler = make_scheduler(generation.scheduler, bundle.scheduler_config)
    # the scheduler's arithmetic on host scalars (indexing its tables with a device timestep
    # would synchronise with the GPU every step); the network reads the timestep on the device
    scheduler.set_timesteps(generation.steps, device="cpu")
    device_timesteps = scheduler.timesteps.to(ctx.device)

    noise = initial_noise(seed, ctx.latent_channels, ctx.latent_height, ctx.latent_width)
    band = ctx.band
    latent = noise[:, :, band.start : band.stop].to(ctx.device) * scheduler.init_noise_sigma

    if not ctx.guided:
        texts = [prompt]
    elif ctx.cfg_parallel:
        texts = [negative_prompt if topology.cfg_index == 0 else prompt]
    else:
        texts = [negative_prompt, prompt]
    with ctx.comm.tracer.ranges.range("encode"):
        conditioning = ctx.family.conditioning(
            bundle, texts, generation.height, generation.width, ctx.device, ctx.dtype
        )
    in_rank_cfg = ctx.guided and not ctx.cfg_parallel
    scale = generation.guidance_scale

    ctx.clock.reset()
    ctx.handle.reset()
    for step, timestep in enumerate(scheduler.timesteps):
        ctx.clock.begin(step)
        if hooks is not None:
            hooks.begin(step, ctx.clock.kind)
        model_in = torch.cat([latent, latent]) if in_rank_cfg else latent
        model_in = scheduler.scale_model_input(model_in, timestep).to(ctx.dtype)
        inputs = ctx.family.step_inputs(model_in, device_timesteps[step], conditioning)
        prediction = ctx.graphs(ctx.clock, inputs).float()
        if in_rank_cfg:
            uncond, cond = prediction.chunk(2)
            prediction = uncond + scale * (cond - uncond)
        elif ctx.guided:
            theirs = ctx.comm.cfg_swap(step, prediction)
            uncond, cond = (prediction, theirs) if topology.cfg_index == 0 else (theirs, prediction)
            prediction = uncond + scale * (cond - uncond)
        latent = scheduler.step(prediction, timestep, latent).prev_sample
        if hooks is not None:
            hooks.end(step, latent)
    if latent.device.type == "cuda":
        # replayed graphs run ahead of the host: end the loop (and its timing) with the GPU
        torch.cuda.synchronize(latent.device)
    return latent
