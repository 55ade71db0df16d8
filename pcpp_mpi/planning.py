"""``pcpp-mpi plan``: bands, halos, neighbour rows and bytes per step, without MPI or weights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pcpp_mpi.accounting import (
    Traffic,
    cfg_swap_bytes,
    gather_bytes,
    step_kind,
    step_traffic,
)
from pcpp_mpi.config import JobConfig
from pcpp_mpi.engine.layout import RunLayout, plan_layout, unet_batch
from pcpp_mpi.geometry import conv_halo, pcpp_rows
from pcpp_mpi.models import unet_config, vae_scale_factor
from pcpp_mpi.parallel.inventory import LayerInventory, trace_inventory

ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}
PLAN_MODES = ("naive", "sync", "distrifusion", "pcpp")


@dataclass(frozen=True)
class JobPlan:
    """Everything ``plan`` reports, as plain data (``as_dict`` for JSON)."""

    job: JobConfig
    layout: RunLayout
    inventory: LayerInventory
    batch: int
    itemsize: int

    def rank_band(self, rank: int) -> int:
        return rank % self.layout.n_bands

    def step_traffic(self, rank: int, mode: str, step: int) -> Traffic:
        """Bytes ``rank`` sends/receives in ``step`` of a run in ``mode`` (CFG swap included)."""
        job = self.job
        kind = step_kind(step, job.generation.steps, mode, job.parallel.warmup_steps)
        traffic = step_traffic(
            self.inventory,
            self.layout.bands,
            self.rank_band(rank),
            kind=kind,
            pattern="pcpp" if mode == "pcpp" else "full",
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
        if rank >= self.layout.n_bands or self.layout.n_bands == 1:
            return traffic
        bands = self.layout.bands
        if rank == 0:
            traffic.received["gather"] = sum(gather_bytes(self.inventory, b) for b in bands[1:])
        else:
            traffic.sent["gather"] = gather_bytes(self.inventory, bands[rank])
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
            band = layout.bands[self.rank_band(rank)]
            index = band.index
            up = layout.bands[index - 1] if index > 0 else None
            down = layout.bands[index + 1] if index + 1 < layout.n_bands else None
            levels = []
            for level in range(layout.levels):
                start, stop = band.at_level(level)
                entry: dict[str, Any] = {"level": level, "rows": [start, stop]}
                entry["pcpp_rows_from_up"] = (
                    0 if up is None else pcpp_rows(job.parallel.ratio, up.rows_at_level(level))
                )
                entry["pcpp_rows_from_down"] = (
                    0 if down is None else pcpp_rows(job.parallel.ratio, down.rows_at_level(level))
                )
                levels.append(entry)
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
                    "cfg_group": rank // layout.n_bands,
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


def make_plan(job: JobConfig, n_ranks: int) -> JobPlan:
    """Plan ``job`` on ``n_ranks`` ranks (raises ConfigError like a real run would)."""
    config = unet_config(job.model)
    layout = plan_layout(job, n_ranks, config, vae_scale_factor(job.model))
    inventory = trace_inventory(config, layout.latent_height, layout.latent_width)
    return JobPlan(job, layout, inventory, unet_batch(job, layout), ITEMSIZE[job.runtime.dtype])
