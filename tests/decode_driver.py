"""Parallel VAE decode against the whole-latent decode, on real MPI ranks (tests only):
``mpirun -np N python tests/decode_driver.py OUT.json``.

For each VAE (the tiny model's architecture, an SDXL-shaped one with narrow channels, an
SD3-shaped one: 16 latent channels, no quant convolutions) with random weights, every rank
decodes its band of a random latent through the band-parallel decoder and the whole latent
through the plain one; rank 0 writes, per VAE, the largest absolute difference of the float32
pixels over all ranks, the output's scale, and whether every rank's counted bytes equal the
plan's prediction; as a control, the smallest difference of a band decoded alone (without its
neighbours' rows) from the same rows.

``engine``: the engine's two decode paths (:class:`ImageDecoder` band by band, and rank 0's
whole decode) on the SD3-shaped VAE with a ``shift_factor``, from a latent in the denoiser's
space, against diffusers' ``vae.decode(latent / scaling_factor + shift_factor)``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import mpi4py

mpi4py.rc.thread_level = "multiple"
import torch  # noqa: E402
from diffusers import AutoencoderKL  # noqa: E402
from mpi4py import MPI  # noqa: E402

from pcpp_mpi.comm.context import RankComm  # noqa: E402
from pcpp_mpi.config import job_from_dict  # noqa: E402
from pcpp_mpi.engine.decode import ImageDecoder, latent_to_pixels  # noqa: E402
from pcpp_mpi.families.vae_decoder.band_decode import decode_band  # noqa: E402
from pcpp_mpi.families.vae_decoder.inventory import decode_latent, trace_decoder  # noqa: E402
from pcpp_mpi.geometry import split_bands  # noqa: E402
from pcpp_mpi.models.bundle import ModelBundle  # noqa: E402
from pcpp_mpi.models.configs import complete_config  # noqa: E402
from pcpp_mpi.models.tiny import tiny_vae_config  # noqa: E402
from pcpp_mpi.plan.decode import decode_traffic  # noqa: E402
from pcpp_mpi.plan.layout import ModelShape, plan_layout  # noqa: E402

LATENT_HEIGHT = 7  # unequal bands on 2, 3 and 4 ranks (4 ranks: one band of one row)
LATENT_WIDTH = 5
STEP = 3


def sdxl_shaped_config() -> dict[str, Any]:
    """SDXL's VAE block structure (4 levels, 2 layers per block, mid-block attention, 32
    groups, force_upcast) with narrow channels."""
    return complete_config(
        AutoencoderKL,
        {
            "in_channels": 3,
            "out_channels": 3,
            "down_block_types": ("DownEncoderBlock2D",) * 4,
            "up_block_types": ("UpDecoderBlock2D",) * 4,
            "block_out_channels": (32, 64, 64, 64),
            "layers_per_block": 2,
            "latent_channels": 4,
            "norm_num_groups": 32,
            "act_fn": "silu",
            "scaling_factor": 0.13025,
            "force_upcast": True,
        },
    )


def sd3_shaped_config() -> dict[str, Any]:
    """SD3's VAE layout (8 pixels per latent element, 16 latent channels, no quant
    convolutions, mid-block attention, a scaling and a shift factor) with narrow channels."""
    return complete_config(
        AutoencoderKL,
        {
            "in_channels": 3,
            "out_channels": 3,
            "down_block_types": ("DownEncoderBlock2D",) * 4,
            "up_block_types": ("UpDecoderBlock2D",) * 4,
            "block_out_channels": (8, 16, 16, 16),
            "layers_per_block": 1,
            "latent_channels": 16,
            "norm_num_groups": 8,
            "act_fn": "silu",
            "scaling_factor": 1.5305,
            "shift_factor": 0.0609,
            "use_quant_conv": False,
            "use_post_quant_conv": False,
        },
    )


CONFIGS = {
    "tiny": lambda: tiny_vae_config(1.0),
    "sdxl_shaped": sdxl_shaped_config,
    "sd3_shaped": sd3_shaped_config,
}


def check(name: str, comm: RankComm) -> dict[str, Any]:
    world = comm.world
    config = CONFIGS[name]()
    torch.manual_seed(0)
    vae = AutoencoderKL(**config).eval()
    latent = torch.randn(1, config["latent_channels"], LATENT_HEIGHT, LATENT_WIDTH)
    with torch.no_grad():
        whole = decode_latent(vae, latent)
    bands = split_bands(LATENT_HEIGHT, world.Get_size(), 1)
    inventory = trace_decoder(config, LATENT_HEIGHT, LATENT_WIDTH)
    group = comm.band_group(world.Get_rank())
    band = bands[group.rank]
    comm.counter.drain()
    pixels = decode_band(
        vae,
        inventory,
        group,
        bands,
        latent[:, :, band.start : band.stop].contiguous(),
        step=STEP,
        wire=comm.wire_spec(torch.device("cpu"), torch.float32),
    )
    factor = inventory.scale_factor
    expected = whole[:, :, band.start * factor : band.stop * factor]
    diff = float((pixels - expected).abs().max()) if pixels.shape == expected.shape else 1e9
    with torch.no_grad():  # the band decoded alone, without its neighbours: must differ
        alone = decode_latent(vae, latent[:, :, band.start : band.stop])
    alone_diff = float((alone - expected).abs().max())
    sent, received = comm.counter.step_totals(0, STEP)
    predicted = decode_traffic(inventory, bands, group.rank, itemsize=4)
    bytes_match = (sent, received) == (predicted.sent, predicted.received)
    group.free()
    return {
        "max_diff": world.allreduce(diff, op=MPI.MAX),
        "alone_diff": world.allreduce(alone_diff, op=MPI.MIN),
        "scale": float(whole.abs().max()),
        "bytes_match": world.allreduce(bytes_match, op=MPI.LAND),
        "decode_sent": world.allreduce(sum(sent.values()), op=MPI.SUM),
        "attentions": len(inventory.attns),
    }


@torch.no_grad()
def check_engine(comm: RankComm) -> dict[str, Any]:
    """The engine's parallel and rank-0 decode of a denoiser-space latent with the SD3-shaped
    VAE, both against diffusers' own decode of ``latent / scaling_factor + shift_factor``."""
    world = comm.world
    config = sd3_shaped_config()
    torch.manual_seed(1)
    vae = AutoencoderKL(**config).eval()
    latent = torch.randn(1, config["latent_channels"], LATENT_HEIGHT, LATENT_WIDTH)
    factor = 8
    reference = vae.decode(latent / config["scaling_factor"] + config["shift_factor"]).sample
    unshifted = vae.decode(latent / config["scaling_factor"]).sample
    bundle = ModelBundle(
        unet=None, vae=vae, encoder=None, scheduler_config={}, vae_scale_factor=factor
    )  # the decode reads only the VAE
    generation = {"height": LATENT_HEIGHT * factor, "width": LATENT_WIDTH * factor}
    job = job_from_dict({"generation": generation, "parallel": {"mode": "sync"}})
    shape = ModelShape(levels=1, latent_channels=config["latent_channels"], vae_scale_factor=factor)
    layout = plan_layout(job, world.Get_size(), shape)
    decoder = ImageDecoder.create(job, comm, bundle, layout)
    assert decoder.parallel and decoder.group is not None
    own = layout.bands[comm.topology.band_index]
    pixels = decoder.band_pixels(latent[:, :, own.start : own.stop], step=0)
    band = decoder.bands[decoder.group.rank]
    expected = reference[:, :, band.start * factor : band.stop * factor]
    decoder.close()
    whole = latent_to_pixels(bundle, latent)
    rank0 = whole[:, :, band.start * factor : band.stop * factor]

    def diff(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).abs().max()) if a.shape == b.shape else 1e9

    return {
        "parallel_vs_rank0": world.allreduce(diff(pixels, rank0), op=MPI.MAX),
        "parallel_vs_reference": world.allreduce(diff(pixels, expected), op=MPI.MAX),
        "rank0_vs_reference": float((whole - reference).abs().max()),
        "shift_matters": float((unshifted - reference).abs().max()),
        "scale": float(reference.abs().max()),
    }


def main(out: str) -> int:
    comm = RankComm(MPI.COMM_WORLD, 1)
    results = {name: check(name, comm) for name in CONFIGS}
    results["engine"] = check_engine(comm)
    if comm.world.Get_rank() == 0:
        with open(out, "w") as file:
            json.dump(results, file)
    comm.free()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
