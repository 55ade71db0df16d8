"""From the final latent to the RGB image rank 0 writes: decoded by every rank band by band
(``output.decode: parallel``), or gathered and decoded by rank 0 (``rank0``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers import AutoencoderKL

from pcpp_mpi.comm.band_group import BandGroup
from pcpp_mpi.comm.context import RankComm
from pcpp_mpi.config import JobConfig
from pcpp_mpi.families.vae_decoder.band_decode import decode_band
from pcpp_mpi.families.vae_decoder.inventory import decode_latent, trace_decoder
from pcpp_mpi.geometry import Band
from pcpp_mpi.models.bundle import ModelBundle
from pcpp_mpi.models.latent_scale import to_vae_latent
from pcpp_mpi.plan.decode import (
    IMAGE_KIND,
    DecoderInventory,
    decode_bands,
    decode_position,
    decodes_in_parallel,
)
from pcpp_mpi.plan.layout import RunLayout


def decoding_vae(bundle: ModelBundle) -> AutoencoderKL:
    """The bundle's VAE in the dtype it decodes in: a float16 VAE with ``force_upcast`` (SDXL's,
    which overflows in float16) is cast to float32, in place."""
    vae = bundle.vae
    if vae.dtype == torch.float16 and vae.config.get("force_upcast", False):
        vae = vae.to(torch.float32)
    return vae


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """Decoder output ``(1, 3, H, W)`` (about [-1, 1]) to ``(H, W, 3)`` uint8 on the host."""
    scaled = ((pixels[0].float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return scaled.permute(1, 2, 0).contiguous().cpu().numpy()


@torch.no_grad()
def latent_to_pixels(bundle: ModelBundle, latent: torch.Tensor) -> torch.Tensor:
    """Decode a global latent ``(1, C, H, W)`` (the denoiser's: unscaled and shifted by the VAE
    config's factors first) whole into pixels ``(1, 3, H*f, W*f)`` (about [-1, 1], the VAE's
    dtype; ``f`` the VAE scale factor): rank 0's decode."""
    vae = decoding_vae(bundle)
    return decode_latent(vae, to_vae_latent(latent.to(vae.device, vae.dtype), vae.config))


def latent_to_image(bundle: ModelBundle, latent: torch.Tensor) -> np.ndarray:
    """Decode a global latent ``(1, C, H, W)`` into an ``(H*f, W*f, 3)`` uint8 image."""
    return to_uint8(latent_to_pixels(bundle, latent))


@dataclass
class ImageDecoder:
    """How one rank turns its final latent band into the image rank 0 writes; made once per
    run (every rank together), :meth:`close` at the end.

    ``parallel``: every rank decodes ``bands[position]`` (latent rows inside its own band) and
    sends its uint8 rows to rank 0; the float32 latent is gathered only for ``/latents``.
    Otherwise the first CFG group gathers the latent and rank 0 decodes it whole.
    """

    job: JobConfig
    comm: RankComm
    bundle: ModelBundle
    layout: RunLayout
    bands: tuple[Band, ...]
    group: BandGroup | None
    inventory: DecoderInventory | None

    @classmethod
    def create(cls, job: JobConfig, comm: RankComm, bundle: ModelBundle, layout: RunLayout):
        if not decodes_in_parallel(job.output.decode, layout):
            return cls(job, comm, bundle, layout, decode_bands("rank0", layout), None, None)
        bands = decode_bands(job.output.decode, layout)
        vae = decoding_vae(bundle)
        inventory = trace_decoder(vae.config, layout.latent_height, layout.latent_width)
        group = comm.band_group(decode_position(comm.topology))
        return cls(job, comm, bundle, layout, bands, group, inventory)

    @property
    def parallel(self) -> bool:
        return self.group is not None

    @property
    def gathers_latent(self) -> bool:
        return not self.parallel or self.job.output.latents

    def finish(
        self, index: int, latent: torch.Tensor
    ) -> tuple[np.ndarray | None, torch.Tensor | None]:
        """Image ``index`` from this rank's final latent band ``(1, C, rows, W)`` (local):
        ``(image (H, W, 3) uint8, global latent (1, C, H, W) float32 or None)`` on rank 0,
        ``(None, None)`` elsewhere. Phases ``gather`` (the latent, when needed), ``decode``
        and, in parallel, ``collect`` (image rows to rank 0)."""
        comm, tracer = self.comm, self.comm.tracer
        last = self.job.generation.steps - 1
        full = None
        if self.gathers_latent:
            with tracer.phase("gather", index):
                if comm.topology.cfg_index == 0:
                    rows = [b.rows for b in self.layout.bands]
                    full = comm.gather_bands(last, latent, rows)
        if self.group is None:
            if full is None:
                return None, None
            with tracer.phase("decode", index):
                return latent_to_image(self.bundle, full), full
        with tracer.phase("decode", index):
            pixels = to_uint8(self.band_pixels(latent, last))
        with tracer.phase("collect", index):
            rows = [b.rows * self.layout.vae_scale_factor for b in self.bands]
            image = self.group.gather_rows(last, IMAGE_KIND, pixels, rows)
        return image, full

    def band_pixels(self, latent: torch.Tensor, step: int) -> torch.Tensor:
        """This rank's decode band (latent rows inside its own band ``latent``
        ``(1, C, rows, W)``, local) through the parallel decoder: its pixels
        ``(1, 3, decode rows * f, W * f)`` (local, the VAE's dtype). Every rank calls it
        together; exchanges are counted in ``step``."""
        assert self.group is not None and self.inventory is not None
        vae = decoding_vae(self.bundle)
        own = self.layout.bands[self.comm.topology.band_index]
        band = self.bands[self.group.rank]
        rows = latent[:, :, band.start - own.start : band.stop - own.start]
        scaled = to_vae_latent(rows.to(vae.device, vae.dtype), vae.config)
        wire = self.comm.wire_spec(vae.device, vae.dtype)
        return decode_band(
            vae, self.inventory, self.group, self.bands, scaled, step=step, wire=wire
        )

    def close(self) -> None:
        if self.group is not None:
            self.group.free()
            self.group = None
