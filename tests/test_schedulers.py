"""The schedulers the engine steps a sharded latent with, ``flow-euler`` (flow matching, SD3)
in particular: its loop against a direct computation, the band promise, ``auto`` and the
errors that name ``generation.scheduler`` before any weights load."""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from model_folder import make_model_folder

from pcpp_mpi.config import job_from_dict
from pcpp_mpi.config.schema import GenerationConfig, JobConfig
from pcpp_mpi.engine.denoise import BandContext, denoise_band, initial_noise
from pcpp_mpi.engine.runner import _check_job
from pcpp_mpi.engine.schedulers import (
    FlowEulerScheduler,
    check_schedule,
    check_scheduler,
    make_scheduler,
    resolve_scheduler,
)
from pcpp_mpi.geometry import Band
from pcpp_mpi.models.bundle import default_scheduler_config

SD3_SCHEDULE = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000,
                "shift": 3.0}  # fmt: skip


def shifted(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's time shift of a sigma in [0, 1]."""
    return shift * sigma / (1 + (shift - 1) * sigma)


# ---------------------------------------------------------------- the loop, on a toy network
class ToyFamily:
    """A "network" ``v = 0.3 x + t / 1000 + c`` with ``c`` a per-prompt constant (the
    conditioning), so the loop's CFG, timesteps and updates are all visible in the result."""

    def conditioning(self, bundle, texts, height, width, device, dtype) -> torch.Tensor:
        return torch.tensor([0.5 if text else -0.25 for text in texts], dtype=dtype)

    def step_inputs(self, sample, timestep, conditioning) -> tuple[torch.Tensor, ...]:
        return sample, timestep, conditioning


def toy_velocity(sample: torch.Tensor, timestep: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return 0.3 * sample + timestep / 1000 + c.view(-1, 1, 1, 1)


class ToyGraphs:
    def __init__(self) -> None:
        self.timesteps: list[float] = []

    def __call__(self, clock, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        sample, timestep, conditioning = inputs
        assert timestep.ndim == 0
        self.timesteps.append(float(timestep))
        return toy_velocity(sample, timestep, conditioning)


class Nothing:
    """Stands in for the clock, the parallel handle and the tracer's ranges."""

    kind = "sync"

    def reset(self) -> None: ...

    def begin(self, step: int) -> None: ...

    def range(self, name: str) -> nullcontext:
        return nullcontext()


@dataclass
class OneRank:
    topology: Any = field(default_factory=lambda: _Topology())
    tracer: Any = field(default_factory=lambda: _Tracer())


@dataclass
class _Topology:
    band_index: int = 0
    cfg_groups: int = 1
    cfg_index: int = 0


@dataclass
class _Tracer:
    ranges: Nothing = field(default_factory=Nothing)


@dataclass
class ScheduleOnly:
    scheduler_config: dict[str, Any]


def test_flow_euler_loop_equals_direct_euler_steps() -> None:
    """One rank, the engine's loop: ``x <- x + (sigma_next - sigma) * v`` with ``v`` guided
    ``v_u + g (v_c - v_u)``, the network fed ``t = 1000 sigma``, the noise unscaled."""
    steps, guidance, seed = 5, 3.0, 11
    height, width, channels = 6, 4, 16
    job = JobConfig(
        generation=GenerationConfig(
            steps=steps, guidance_scale=guidance, scheduler="flow-euler", height=48, width=32
        )
    )
    graphs = ToyGraphs()
    ctx = BandContext(
        job=job, comm=OneRank(), bundle=ScheduleOnly(SD3_SCHEDULE), family=ToyFamily(),
        bands=(Band(0, 0, height),), clock=Nothing(), handle=Nothing(), graphs=graphs,
        device=torch.device("cpu"), dtype=torch.float32, latent_height=height,
        latent_width=width, latent_channels=channels,
    )  # fmt: skip
    result = denoise_band(ctx, "a prompt", "", seed)

    # the reference, written out: diffusers' SD3 schedule (the training schedule's smallest
    # sigma 1/1000 is shifted, the inference sigmas spaced linearly between it and 1 and
    # shifted again), then plain Euler steps of the probability-flow ODE
    lowest = shifted(torch.tensor(1 / 1000), 3.0)
    sigmas = [*shifted(torch.linspace(1.0, float(lowest), steps), 3.0).tolist(), 0.0]
    x = initial_noise(seed, channels, height, width)
    for i in range(steps):
        t = torch.tensor(sigmas[i] * 1000)
        uncond = toy_velocity(x, t, torch.tensor([-0.25]))
        cond = toy_velocity(x, t, torch.tensor([0.5]))
        x = x + (sigmas[i + 1] - sigmas[i]) * (uncond + guidance * (cond - uncond))
    assert graphs.timesteps == pytest.approx([s * 1000 for s in sigmas[:-1]], rel=1e-6)
    assert result.shape == (1, channels, height, width)
    assert torch.allclose(result, x, atol=1e-5, rtol=1e-5)
    assert (result - initial_noise(seed, channels, height, width)).abs().max() > 1.0


def test_a_flow_step_of_a_band_is_that_band_of_the_whole_step() -> None:
    """The promise the sharded latent rests on, for flow-euler with every sigma option that
    keeps it (Karras spacing, a terminal shift)."""
    for extra in ({}, {"use_karras_sigmas": True}, {"shift_terminal": 0.1}):
        whole, band = (make_scheduler("flow-euler", {**SD3_SCHEDULE, **extra}) for _ in "ab")
        for scheduler in (whole, band):
            scheduler.set_timesteps(4)
        x, v = torch.randn(2, 1, 16, 8, 8).unbind()
        for t in whole.timesteps:
            stepped = whole.step(v, t, x).prev_sample
            rows = band.step(v[:, :, 3:6], t, x[:, :, 3:6]).prev_sample
            assert torch.equal(rows, stepped[:, :, 3:6]), extra
            x = stepped


def test_stochastic_sampling_is_switched_off() -> None:
    """It would draw noise of the band's shape: results would depend on the rank count."""
    scheduler = make_scheduler("flow-euler", {**SD3_SCHEDULE, "stochastic_sampling": True})
    assert isinstance(scheduler, FlowEulerScheduler)
    assert scheduler.config.stochastic_sampling is False
    assert scheduler.init_noise_sigma == 1.0
    sample = torch.randn(1, 16, 2, 2)
    assert scheduler.scale_model_input(sample, 500.0) is sample


# ---------------------------------------------------------------- choosing and checking
def test_auto_picks_flow_euler_for_a_flow_matching_schedule_and_ddim_otherwise() -> None:
    assert resolve_scheduler("auto", SD3_SCHEDULE) == "flow-euler"
    assert resolve_scheduler("auto", default_scheduler_config()) == "ddim"
    assert resolve_scheduler("euler", SD3_SCHEDULE) == "euler"  # explicit names stay
    assert job_from_dict({}).generation.scheduler == "auto"
    assert isinstance(make_scheduler("auto", SD3_SCHEDULE), FlowEulerScheduler)
    assert type(make_scheduler("auto", default_scheduler_config())).__name__ == "DDIMScheduler"


def test_flow_euler_on_a_ddpm_schedule_is_the_plain_flow_schedule() -> None:
    """Built-in and random-weight models (DDPM-style schedule) run flow-euler with shift 1."""
    scheduler = make_scheduler("flow-euler", default_scheduler_config())
    scheduler.set_timesteps(4)
    assert scheduler.config.shift == 1.0
    assert scheduler.timesteps.tolist() == pytest.approx([1000.0, 667.0, 334.0, 1.0])
    check_scheduler("flow-euler", default_scheduler_config(), trained=False)
    check_schedule("flow-euler", default_scheduler_config(), 1000)  # t = 1000 is sigma = 1


@pytest.mark.parametrize(
    ("name", "config", "message"),
    [
        ("flow-euler", default_scheduler_config(), "is for flow-matching models"),
        ("ddim", SD3_SCHEDULE, "'ddim' is for noise-prediction models"),
        ("dpmsolver++", SD3_SCHEDULE, "use flow-euler or auto"),
        ("auto", {**SD3_SCHEDULE, "use_dynamic_shifting": True}, "use_dynamic_shifting"),
    ],
)
def test_a_scheduler_that_does_not_fit_the_trained_model_is_refused(
    name: str, config: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=r"^generation\.scheduler: ") as info:
        check_scheduler(name, config, trained=True)
    assert message in str(info.value)


def test_the_run_refuses_a_mismatched_scheduler_before_loading_weights(tmp_path: Path) -> None:
    """A model folder's schedule decides: a DDIM folder refuses flow-euler; after its
    scheduler_config.json becomes SD3's, ddim is refused and auto and flow-euler pass."""
    folder = make_model_folder(tmp_path / "sd", kind="sd")

    def check(scheduler: str) -> None:
        settings = {"model": {"path": str(folder)}, "generation": {"scheduler": scheduler}}
        _check_job(job_from_dict(settings), 1)

    check("auto")
    with pytest.raises(ValueError, match=r"generation\.scheduler: 'flow-euler'"):
        check("flow-euler")
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD3_SCHEDULE))
    check("auto")
    check("flow-euler")
    with pytest.raises(ValueError, match=r"generation\.scheduler: 'ddim'"):
        check("ddim")


def test_the_run_refuses_a_vae_of_other_latent_channels_before_loading_weights(
    tmp_path: Path,
) -> None:
    """Latent channels come from the model: a 16-channel VAE (SD3's) under a 4-channel UNet
    would fail only at the decode, after every step; it is refused when the job starts."""
    folder = make_model_folder(tmp_path / "sd", kind="sd")
    config_path = folder / "vae" / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "latent_channels": 16, "shift_factor": 0.06}))
    with pytest.raises(ValueError, match=r"^model: the UNet steps latents of 4 channels, but "):
        _check_job(job_from_dict({"model": {"path": str(folder)}}), 1)
