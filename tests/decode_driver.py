"""Parallel VAE decode against the whole-latent decode, on real MPI ranks (tests only):
``mpirun -np N python tests/decode_driver.py OUT.json``.

For each VAE (the tiny model's architecture, an SDXL-shaped one with narrow channels) with
random weights, every rank decodes its band of a random latent through the band-parallel
decoder and the whole latent through the plain one; rank 0 writes, per VAE, the largest
absolute difference of the float32 pixels over all ranks, the output's scale, and whether
every rank's counted bytes equal the plan's prediction; as a control, the smallest
difference of a band decoded alone (without its neighbours' rows) from the same rows.
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
from pcpp_mpi.families.vae_decoder.band_decode import decode_band  # noqa: E402
from pcpp_mpi.families.vae_decoder.inventory import decode_latent, trace_decoder  # noqa: E402
from pcpp_mpi.geometry import split_bands  # noqa: E402
from pcpp_mpi.models.configs import complete_config  # noqa: E402
from pcpp_mpi.models.tiny import tiny_vae_config  # noqa: E402
from pcpp_mpi.plan.decode import decode_traffic  # noqa: E402

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


CONFIGS = {"tiny": lambda: tiny_vae_config(1.0), "sdxl_shaped": sdxl_shaped_config}


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


def main(out: str) -> int:
    comm = RankComm(MPI.COMM_WORLD, 1)
    results = {name: check(name, comm) for name in CONFIGS}
    if comm.world.Get_rank() == 0:
        with open(out, "w") as file:
            json.dump(results, file)
    comm.free()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
