"""Checking a GPU run's step times: the GPU step times of a rank add up to its denoising.

During an image's ``denoise`` phase (host clock, from before the first step to after the
synchronize that ends the last) the GPU runs the steps back to back, since the host queues
them ahead of it; the sum of the steps' GPU times (``/gpu_steps``) must therefore match the
phase closely. Host step times (``/steps``) measure only the queuing and add up to far less.
No MPI, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pcpp_mpi.analysis.files import RankTrace, load_run


@dataclass(frozen=True)
class StepTimeCheck:
    """One rank's figures (seconds): sums over all images of the run."""

    rank: int
    gpu_sum_s: float  # sum of the GPU step times
    host_sum_s: float  # sum of the host step times, for comparison
    denoise_s: float  # sum of the denoise phases
    gpu_steps: int
    steps: int
    tolerance: float

    @property
    def ratio(self) -> float:
        return self.gpu_sum_s / self.denoise_s if self.denoise_s > 0 else float("nan")

    @property
    def ok(self) -> bool:
        return self.gpu_steps == self.steps > 0 and abs(self.ratio - 1.0) <= self.tolerance


def check_rank(trace: RankTrace, tolerance: float) -> StepTimeCheck:
    phases = trace.phases[trace.phases["name"] == "denoise"]
    gpu = trace.gpu_steps
    walls = gpu["wall"][np.isfinite(gpu["wall"])]
    return StepTimeCheck(
        rank=trace.rank,
        gpu_sum_s=float(walls.sum()),
        host_sum_s=float(trace.host_steps["wall"].sum()),
        denoise_s=float((phases["t_end"] - phases["t_start"]).sum()),
        gpu_steps=len(walls),
        steps=len(trace.host_steps),
        tolerance=tolerance,
    )


def check_step_times(run: str | Path, tolerance: float = 0.02) -> list[StepTimeCheck]:
    """The check of every rank of the run at ``run`` (directory or ``run.h5``)."""
    return [check_rank(trace, tolerance) for trace in load_run(run).ranks]


def format_check(check: StepTimeCheck) -> str:
    verdict = "ok" if check.ok else "OFF"
    return (
        f"rank {check.rank}: sum of GPU step times {check.gpu_sum_s:.4f} s "
        f"({check.gpu_steps}/{check.steps} steps), denoise phase {check.denoise_s:.4f} s, "
        f"ratio {check.ratio:.4f} (limit 1 +- {check.tolerance:g}): {verdict}; "
        f"host step times sum to {check.host_sum_s:.4f} s"
    )
