"""Schedulers whose step updates each latent element from its own prediction only.

Such a scheduler can step one band of the latent by itself (DDIM with eta 0, Euler without
churn, DPM-Solver++), so the latent stays sharded across ranks until the end.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin


def make_scheduler(name: str, config: Mapping[str, Any]) -> SchedulerMixin:
    """A fresh scheduler ``name`` (``ddim``, ``euler``, ``dpmsolver++``) from a model's config."""
    base = dict(config)
    if name == "ddim":
        return DDIMScheduler.from_config(base, thresholding=False)
    if name == "euler":
        return EulerDiscreteScheduler.from_config(base)
    if name == "dpmsolver++":
        return DPMSolverMultistepScheduler.from_config(
            base, algorithm_type="dpmsolver++", thresholding=False
        )
    raise ValueError(f"unknown scheduler {name!r} (known: ddim, euler, dpmsolver++)")


def check_schedule(name: str, config: Mapping[str, Any], steps: int) -> None:
    """Raise ValueError naming ``generation.steps`` if the schedule cannot take ``steps`` steps
    (e.g. DDIM with more steps than training timesteps minus its offset)."""
    scheduler = make_scheduler(name, config)
    train_steps = int(scheduler.config.num_train_timesteps)
    try:
        scheduler.set_timesteps(steps)
    except ValueError as exc:
        raise ValueError(
            f"generation.steps: {steps} steps do not fit the schedule ({exc})"
        ) from exc
    last = int(scheduler.timesteps.max())
    if last >= train_steps or len(scheduler.timesteps) != steps:
        raise ValueError(
            f"generation.steps: {steps} steps of {name} reach timestep {last} of a schedule "
            f"trained on {train_steps} timesteps (0 to {train_steps - 1}); use fewer steps"
        )
