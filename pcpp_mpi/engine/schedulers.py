"""Schedulers whose step updates each latent element from its own prediction only.

Such a scheduler can step one band of the latent by itself (DDIM with eta 0, Euler without
churn, DPM-Solver++, flow-matching Euler without stochastic sampling), so the latent stays
sharded across ranks until the end. Every quantity a step uses besides the element and its
prediction is a scalar of the schedule (a sigma, an alpha), the same on every rank.

Two objectives: noise-prediction models (``ddim``, ``euler``, ``dpmsolver++``, from a
DDPM-style schedule) and flow-matching models such as SD3 (``flow-euler``, from a
``FlowMatch...`` schedule: the network predicts a velocity ``v`` and a step is
``x <- x + (sigma_next - sigma) * v``). ``auto`` picks ``flow-euler`` for a model whose
scheduler config is a flow-matching one and ``ddim`` otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

#: the schedulers for noise-prediction (DDPM-style) schedules
NOISE_SCHEDULERS: tuple[str, ...] = ("ddim", "euler", "dpmsolver++")
#: the schedulers for flow-matching schedules
FLOW_SCHEDULERS: tuple[str, ...] = ("flow-euler",)
KNOWN = ("auto", *NOISE_SCHEDULERS, *FLOW_SCHEDULERS)


class FlowEulerScheduler(FlowMatchEulerDiscreteScheduler):
    """diffusers' flow-matching Euler scheduler with the interface the denoising loop uses for
    every scheduler: the initial noise is not scaled (``init_noise_sigma`` 1: at ``sigma = 1``
    the latent is pure noise) and the model input is the latent itself."""

    init_noise_sigma = 1.0

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        """``sample`` unchanged: a flow-matching network reads the latent as it is."""
        return sample


def is_flow_matching(config: Mapping[str, Any]) -> bool:
    """Whether a diffusers scheduler config describes a flow-matching schedule (its class is
    one of diffusers' ``FlowMatch...`` schedulers, as SD3's ``FlowMatchEulerDiscreteScheduler``)."""
    return str(config.get("_class_name", "")).startswith("FlowMatch")


def resolve_scheduler(name: str, config: Mapping[str, Any]) -> str:
    """``name``, with ``auto`` replaced by ``flow-euler`` for a flow-matching schedule and by
    ``ddim`` otherwise."""
    if name == "auto":
        return "flow-euler" if is_flow_matching(config) else "ddim"
    return name


def _flow_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The flow-matching settings of ``config``; from a DDPM-style config (a model without a
    flow-matching schedule) only its number of training timesteps, i.e. the plain schedule
    (``shift`` 1)."""
    if is_flow_matching(config):
        return dict(config)
    return {"num_train_timesteps": int(config.get("num_train_timesteps", 1000))}


def make_scheduler(name: str, config: Mapping[str, Any]) -> SchedulerMixin:
    """A fresh scheduler ``name`` (``auto``, ``ddim``, ``euler``, ``dpmsolver++``,
    ``flow-euler``) from a model's scheduler config.

    Options that would draw noise or look at the whole latent are switched off: DDIM's and
    DPM-Solver++'s thresholding (per-image quantiles), flow-matching's stochastic sampling
    (noise of the band's shape, which would depend on the rank count).
    """
    name = resolve_scheduler(name, config)
    base = dict(config)
    if name == "ddim":
        return DDIMScheduler.from_config(base, thresholding=False)
    if name == "euler":
        return EulerDiscreteScheduler.from_config(base)
    if name == "dpmsolver++":
        return DPMSolverMultistepScheduler.from_config(
            base, algorithm_type="dpmsolver++", thresholding=False
        )
    if name == "flow-euler":
        return FlowEulerScheduler.from_config(_flow_config(base), stochastic_sampling=False)
    raise ValueError(f"unknown scheduler {name!r} (known: {', '.join(KNOWN)})")


def check_scheduler(name: str, config: Mapping[str, Any], *, trained: bool) -> None:
    """Raise ValueError naming ``generation.scheduler`` if scheduler ``name`` cannot run the
    model whose scheduler config is ``config``.

    ``trained``: the model's weights were trained on this schedule (a model folder), so the
    objective must match: ``flow-euler`` needs a flow-matching schedule and the other
    schedulers a noise-prediction one (random or built-in weights accept every scheduler).
    Resolution-dependent shifting (``use_dynamic_shifting``) is not supported.
    """
    resolved = resolve_scheduler(name, config)
    flow_model = is_flow_matching(config)
    kind = config.get("_class_name", "a DDPM-style schedule")
    if trained and resolved in FLOW_SCHEDULERS and not flow_model:
        raise ValueError(
            f"generation.scheduler: {name!r} is for flow-matching models, but this model's "
            f"scheduler config is {kind} (noise prediction); use one of "
            f"{', '.join(NOISE_SCHEDULERS)} or auto"
        )
    if trained and resolved in NOISE_SCHEDULERS and flow_model:
        raise ValueError(
            f"generation.scheduler: {name!r} is for noise-prediction models, but this model's "
            f"scheduler config is {kind} (flow matching); use "
            f"{' or '.join(FLOW_SCHEDULERS)} or auto"
        )
    if resolved in FLOW_SCHEDULERS and _flow_config(config).get("use_dynamic_shifting"):
        raise ValueError(
            f"generation.scheduler: {name!r}: the model's scheduler config sets "
            "use_dynamic_shifting (a shift that depends on the image size), which is not "
            "supported"
        )


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
    # flow-matching timesteps are continuous (sigma * num_train_timesteps, up to and including
    # num_train_timesteps); discrete ones index the training schedule
    beyond = last >= train_steps and not isinstance(scheduler, FlowEulerScheduler)
    if beyond or len(scheduler.timesteps) != steps:
        raise ValueError(
            f"generation.steps: {steps} steps of {name} reach timestep {last} of a schedule "
            f"trained on {train_steps} timesteps (0 to {train_steps - 1}); use fewer steps"
        )
