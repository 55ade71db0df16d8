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
from pcpp_mpi.geometry import conv_halo
from pcpp_mpi.plan.accounting import Traffic, cfg_swap_bytes, gather_bytes, step_traffic
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
    UNet batch per rank; ``itemsize``: bytes per activation element (``runtime.dtype``)."""

    job: JobConfig
    layout: RunLayout
    inventory: LayerInventory
    batch: int
    itemsize: int

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

    def gather(self, rank: int) -> Traffic:
        """Bytes of the final latent gather to rank 0 (only the first CFG group gathers)."""
        traffic = Traffic()
        place = self.topology(rank)
        if place.cfg_index > 0 or self.layout.n_bands == 1:
            return traffic
        bands = self.layout.bands
        if place.is_output_rank:
            traffic.received["gather"] = sum(gather_bytes(self.inventory, b) for b in bands[1:])
        else:
            traffic.sent["gather"] = gather_bytes(self.inventory, bands[place.band_index])
        return traffic

    def run_totals(self, rank: int, mode: str) -> tuple[int, int]:
        """Bytes sent and received by ``rank`` over one image's whole run in ``mode``."""
        sent = received = 0
        for step in range(self.job.generation.steps):
            traffic = self.step_traffic(rank, mode, step)
            sent += traffic.total_sent
            received += traffic.total_received
        gather = self.gather(rank)
        return sent + gather.total_sent, received + gather.total_received

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
            "per_rank": ranks,
        }


def build_plan(job: JobConfig, layout: RunLayout, inventory: LayerInventory) -> JobPlan:
    """The plan of ``job`` in ``layout`` (from :func:`~pcpp_mpi.plan.layout.plan_layout`) for a
    UNet whose spatial layers are ``inventory`` (traced at the layout's latent size)."""
    return JobPlan(job, layout, inventory, unet_batch(job, layout), ITEMSIZE[job.runtime.dtype])
