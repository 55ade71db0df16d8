"""A job's band layout for a rank count, from the model's shape alone (no weights), and the
model batch a rank computes in it. Pure: no MPI, no torch, no weights."""

from __future__ import annotations

from dataclasses import dataclass

from pcpp_mpi.config import ConfigError, JobConfig, check_ranks
from pcpp_mpi.geometry import Band, level_unit, split_bands
from pcpp_mpi.plan.schedule import effective_mode
from pcpp_mpi.plan.topology import cfg_group_count


@dataclass(frozen=True)
class ModelShape:
    """What the band layout needs of a model, read from its configuration (no weights).

    ``levels``: resolution levels; level ``l`` has ``latent_height / 2**l`` rows, so a band is a
    multiple of ``2**(levels - 1)`` latent rows. ``latent_channels``: channels of the latent the
    model steps. ``vae_scale_factor``: pixels per latent element along each axis. ``network``:
    what messages call the model (``UNet``). ``unit_reason``: why bands are multiples of
    ``2**(levels - 1)`` rows, for messages (default: the network's levels; a transformer's
    is its patch size).
    """

    levels: int
    latent_channels: int
    vae_scale_factor: int
    network: str = "UNet"
    unit_reason: str | None = None


@dataclass(frozen=True)
class RunLayout:
    """How ``n_ranks`` ranks split a job: latent size, band unit, bands and CFG groups."""

    n_ranks: int
    latent_height: int
    latent_width: int
    latent_channels: int
    levels: int
    unit: int
    vae_scale_factor: int
    cfg_groups: int
    bands: tuple[Band, ...]
    mode: str

    @property
    def n_bands(self) -> int:
        return len(self.bands)


def _nearest_sizes(size: int, pixels: int) -> str:
    """The valid sizes next to ``size`` (not a multiple of ``pixels``), as advice."""
    below = size // pixels * pixels
    if below == 0:
        return f"use {pixels} (the smallest size) or more"
    return f"use {below} or {below + pixels}"


def plan_layout(job: JobConfig, n_ranks: int, shape: ModelShape) -> RunLayout:
    """Check the job against the model's ``shape`` (a family's ``model_shape``) and the rank
    count; raise ConfigError naming the key."""
    generation = job.generation
    levels = shape.levels
    vae_scale_factor = shape.vae_scale_factor
    unit = level_unit(levels)
    pixels = vae_scale_factor * unit
    for key, size in (("height", generation.height), ("width", generation.width)):
        if size % pixels:
            why = shape.unit_reason or (
                f"2**{levels - 1} for a {shape.network} with {levels} levels"
            )
            raise ConfigError(
                f"generation.{key}: {size} px is not a multiple of {pixels} px (VAE scale "
                f"{vae_scale_factor} x {why}); {_nearest_sizes(size, pixels)}"
            )
    latent_height = generation.height // vae_scale_factor
    latent_width = generation.width // vae_scale_factor
    check_ranks(job, n_ranks, latent_height, unit)
    cfg_groups = cfg_group_count(job.parallel.cfg_parallel, n_ranks)
    bands = split_bands(latent_height, n_ranks // cfg_groups, unit)
    return RunLayout(
        n_ranks=n_ranks,
        latent_height=latent_height,
        latent_width=latent_width,
        latent_channels=shape.latent_channels,
        levels=levels,
        unit=unit,
        vae_scale_factor=vae_scale_factor,
        cfg_groups=cfg_groups,
        bands=bands,
        mode=effective_mode(job.parallel.mode, len(bands)),
    )


def unet_batch(job: JobConfig, layout: RunLayout) -> int:
    """The model's batch on one rank: 2 with in-rank CFG, 1 with cfg_parallel or no
    guidance."""
    guided = job.generation.guidance_scale > 1.0
    return 2 if guided and layout.cfg_groups == 1 else 1
