"""A job's plan for a rank count as plain data: bands, neighbour rows and bytes per step.

What ``pcpp-mpi plan`` prints. The layer inventory comes in as data
(:class:`~pcpp_mpi.plan.inventory.LayerInventory`), so this module needs no torch;
:func:`pcpp_mpi.planning.make_plan` traces it from the model's configuration.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from pcpp_mpi.config import JobConfig
from pcpp_mpi.config.modes import SPLIT_MODES
from pcpp_mpi.geometry import Band, conv_halo
from pcpp_mpi.plan.accounting import Traffic, cfg_swap_bytes, gather_bytes, step_traffic
from pcpp_mpi.plan.decode import (
    DecoderInventory,
    decode_bands,
    decode_itemsize,
    decode_position,
    decode_traffic,
    decodes_in_parallel,
    image_traffic,
)
from pcpp_mpi.plan.inventory import LayerInventory
from pcpp_mpi.plan.layout import RunLayout, unet_batch
from pcpp_mpi.plan.schedule import attention_pattern, step_kind
from pcpp_mpi.plan.topology import Topology, neighbours, shared_rows

#: bytes per activation element of each ``runtime.dtype``
ITEMSIZE: Mapping[str, int] = MappingProxyType({"float32": 4, "float16": 2, "bfloat16": 2})
#: the modes a plan compares: every mode that splits the latent into bands
PLAN_MODES: tuple[str, ...] = SPLIT_MODES


@dataclass(frozen=True)
class JobPlan:
    """Everything ``plan`` reports, as plain data (``as_dict`` for JSON). ``batch``: the
    UNet batch per rank; ``itemsize``: bytes per activation element (``runtime.dtype``);
    ``decoder``: the VAE decoder's layers (the parallel decode's exchanges)."""

    job: JobConfig
    layout: RunLayout
    inventory: LayerInventory
    batch: int
    itemsize: int
    decoder: DecoderInventory

    def topology(self, rank: int) -> Topology:
        """Where world rank ``rank`` sits: its band and CFG group."""
        return Topology(self.layout.n_ranks, rank, self.layout.cfg_groups)

    def rank_band(self, rank: int) -> int:
        return self.topology(rank).band_index

    def step_traffic(self, rank: int, mode: str, step: int) -> Traffic:
        """Bytes ``rank`` sends/receives in ``step`` of a run in ``mode`` (CFG swap included)."""
        job = self.job
        kind = step_kind(step, job.generation.steps, mode, job.parallel.warmup_steps)
        traffic = step_traffic(
            self.inventory,
            self.layout.bands,
            self.rank_band(rank),
            kind=kind,
            pattern=attention_pattern(mode),
            ratio=job.parallel.ratio,
            batch=self.batch,
            itemsize=self.itemsize,
        )
        if self.layout.cfg_groups == 2:
            swap = cfg_swap_bytes(self.inventory, self.layout.bands[self.rank_band(rank)])
            traffic.sent["cfg"] = swap
            traffic.received["cfg"] = swap
        return traffic

    @property
    def decode_parallel(self) -> bool:
        """Whether every rank decodes its band (``output.decode: parallel``, several ranks)."""
        return decodes_in_parallel(self.job.output.decode, self.layout)

    @property
    def decode_bands(self) -> tuple[Band, ...]:
        """Latent rows each decoding rank decodes, by decode position."""
        return decode_bands(self.job.output.decode, self.layout)

    def gather(self, rank: int) -> Traffic:
        """Bytes of the final latent gather to rank 0 (only the first CFG group gathers; with
        parallel decoding only for ``output.latents``)."""
        traffic = Traffic()
        place = self.topology(rank)
        if place.cfg_index > 0 or self.layout.n_bands == 1:
            return traffic
        if self.decode_parallel and not self.job.output.latents:
            return traffic
        bands = self.layout.bands
        if place.is_output_rank:
            traffic.received["gather"] = sum(gather_bytes(self.inventory, b) for b in bands[1:])
        else:
            traffic.sent["gather"] = gather_bytes(self.inventory, bands[place.band_index])
        return traffic

    def decode(self, rank: int) -> Traffic:
        """Bytes of ``rank``'s parallel decode of one image (kind ``decode``: halo rows,
        GroupNorm sums, K/V) and of its uint8 image rows to rank 0 (kind ``image``); empty
        when rank 0 decodes alone."""
        if not self.decode_parallel:
            return Traffic()
        bands = self.decode_bands
        position = decode_position(self.topology(rank))
        itemsize = decode_itemsize(self.itemsize, self.decoder.force_upcast)
        traffic = decode_traffic(self.decoder, bands, position, itemsize)
        images = image_traffic(self.decoder, bands, position)
        return Traffic({**traffic.sent, **images.sent}, {**traffic.received, **images.received})

    def final(self, rank: int) -> Traffic:
        """Everything after the denoising of one image (counted in its last step): the
        latent gather and the decode."""
        gather, decode = self.gather(rank), self.decode(rank)
        return Traffic({**gather.sent, **decode.sent}, {**gather.received, **decode.received})

    def run_totals(self, rank: int, mode: str) -> tuple[int, int]:
        """Bytes sent and received by ``rank`` over one image's whole run in ``mode``."""
        sent = received = 0
        for step in range(self.job.generation.steps):
            traffic = self.step_traffic(rank, mode, step)
            sent += traffic.total_sent
            received += traffic.total_received
        final = self.final(rank)
        return sent + final.total_sent, received + final.total_received

    def as_dict(self) -> dict[str, Any]:
        layout, job = self.layout, self.job
        ranks = []
        for rank in range(layout.n_ranks):
            place = self.topology(rank)
            index = place.band_index
            band = layout.bands[index]
            up, down = neighbours(layout.bands, index)
            levels = []
            for level in range(layout.levels):
                start, stop = band.at_level(level)
                shared = shared_rows(job.parallel.ratio, layout.bands, index, level)
                levels.append(
                    {
                        "level": level,
                        "rows": [start, stop],
                        "pcpp_rows_from_up": shared.from_up,
                        "pcpp_rows_from_down": shared.from_down,
                    }
                )
            modes = {}
            for mode in PLAN_MODES:
                steps = job.generation.steps
                first = self.step_traffic(rank, mode, 0)
                displaced = self.step_traffic(rank, mode, max(steps - 2, 0))
                sent, received = self.run_totals(rank, mode)
                modes[mode] = {
                    "first_step": {"sent": first.sent, "received": first.received},
                    "steady_step": {"sent": displaced.sent, "received": displaced.received},
                    "run_sent": sent,
                    "run_received": received,
                }
            ranks.append(
                {
                    "rank": rank,
                    "band": index,
                    "cfg_group": place.cfg_index,
                    "levels": levels,
                    "halo_rows_from_up": sum(
                        conv_halo(c.kernel, c.stride, c.padding, c.dilation).above
                        for c in self.inventory.convs
                    )
                    if up is not None
                    else 0,
                    "halo_rows_from_down": sum(
                        conv_halo(c.kernel, c.stride, c.padding, c.dilation).below
                        for c in self.inventory.convs
                    )
                    if down is not None
                    else 0,
                    "modes": modes,
                    "decode": self._decode_dict(rank),
                }
            )
        return {
            "ranks": layout.n_ranks,
            "bands": [[b.start, b.stop] for b in layout.bands],
            "cfg_groups": layout.cfg_groups,
            "latent": [layout.latent_height, layout.latent_width],
            "levels": layout.levels,
            "unit": layout.unit,
            "batch": self.batch,
            "itemsize": self.itemsize,
            "steps": job.generation.steps,
            "warmup_steps": job.parallel.warmup_steps,
            "ratio": job.parallel.ratio,
            "layers": {
                "halo_convs": len(self.inventory.convs),
                "group_norms": len(self.inventory.norms),
                "self_attentions": len(self.inventory.attns),
            },
            "decode": {
                "mode": "parallel" if self.decode_parallel else "rank0",
                "bands": [[b.start, b.stop] for b in self.decode_bands],
                "itemsize": decode_itemsize(self.itemsize, self.decoder.force_upcast),
                "halo_convs": len(self.decoder.convs),
                "group_norms": len(self.decoder.norms),
                "self_attentions": len(self.decoder.attns),
                "latents_gathered": not self.decode_parallel or self.job.output.latents,
            },
            "per_rank": ranks,
        }

    def _decode_dict(self, rank: int) -> dict[str, Any]:
        """``rank``'s decode band (latent rows) and its bytes per image (decode, image rows,
        latent gather)."""
        final = self.final(rank)
        band = None
        if self.decode_parallel:
            band = self.decode_bands[decode_position(self.topology(rank))]
        elif rank == 0:
            band = self.decode_bands[0]
        return {
            "band": None if band is None else [band.start, band.stop],
            "sent": final.sent,
            "received": final.received,
        }


def build_plan(
    job: JobConfig, layout: RunLayout, inventory: LayerInventory, decoder: DecoderInventory
) -> JobPlan:
    """The plan of ``job`` in ``layout`` (from :func:`~pcpp_mpi.plan.layout.plan_layout`) for a
    UNet whose spatial layers are ``inventory`` and a VAE decoder whose layers are ``decoder``
    (both traced at the layout's latent size)."""
    itemsize = ITEMSIZE[job.runtime.dtype]
    return JobPlan(job, layout, inventory, unet_batch(job, layout), itemsize, decoder)
