"""The parallel modes: the mode table, the rules of the ``parallel`` section, and the checks of a
job against the rank count (``check_ranks``)."""

from __future__ import annotations

from typing import Any, get_args

import pytest
from config_helpers import error_of, with_

from pcpp_mpi.config import (
    ConfigError,
    JobConfig,
    ParallelConfig,
    check_ranks,
    job_from_dict,
)
from pcpp_mpi.config.modes import DISPLACED_MODES, MODE_RULES, MODES, SPLIT_MODES, mode_rule
from pcpp_mpi.config.schema import ModeName

# --------------------------------------------------------------------------------------------
# The mode table


def test_mode_table_matches_the_schema_and_names_each_mode_once() -> None:
    assert MODES == get_args(ModeName) == ("single", "naive", "sync", "distrifusion", "pcpp")
    assert DISPLACED_MODES == ("distrifusion", "pcpp")
    assert SPLIT_MODES == ("naive", "sync", "distrifusion", "pcpp")
    assert [r.name for r in MODE_RULES if r.communicates] == ["sync", "distrifusion", "pcpp"]
    assert [r.name for r in MODE_RULES if r.attention == "pcpp"] == ["pcpp"]
    # a displaced mode communicates; a mode that communicates splits the latent
    assert all(r.communicates for r in MODE_RULES if r.displaced)
    assert all(r.splits for r in MODE_RULES if r.communicates)


def test_mode_rule_of_an_unknown_name() -> None:
    assert mode_rule("pcpp").displaced
    with pytest.raises(KeyError, match="no parallel mode 'ring'"):
        mode_rule("ring")


# --------------------------------------------------------------------------------------------
# Parallel rules


@pytest.mark.parametrize("ratio", [1.5, -0.1])
def test_ratio_in_unit_interval(ratio: float) -> None:
    message = error_of({"parallel": {"ratio": ratio}})
    assert message == f"parallel.ratio: must be in [0, 1], got {ratio}"


@pytest.mark.parametrize("ratio", [0, 0.0, 0.3, 1, 1.0])
def test_ratio_bounds_inclusive(ratio: float) -> None:
    assert with_(parallel={"ratio": ratio}).parallel.ratio == ratio


def test_warmup_non_negative() -> None:
    message = error_of({"parallel": {"mode": "sync", "warmup_steps": -1}})
    assert message == "parallel.warmup_steps: must be >= 0, got -1"


@pytest.mark.parametrize("mode", ["distrifusion", "pcpp"])
def test_warmup_at_most_steps(mode: str) -> None:
    message = error_of({"generation": {"steps": 5}, "parallel": {"mode": mode, "warmup_steps": 6}})
    assert message == (
        f"parallel.warmup_steps: must be <= generation.steps (5) in mode '{mode}', got 6"
    )


@pytest.mark.parametrize("mode", ["single", "naive", "sync"])
def test_warmup_is_ignored_outside_the_displaced_modes(mode: str) -> None:
    # the default warmup_steps (4) must not block a short run in a mode that has no warm-up
    job = job_from_dict({}, [f"parallel.mode={mode}", "generation.steps=2"])
    assert job.generation.steps == 2
    assert job.parallel.warmup_steps == ParallelConfig().warmup_steps


def test_warmup_equal_to_steps_is_allowed() -> None:
    # all steps warm: the displaced modes then equal `single` exactly
    job = with_(generation={"steps": 5}, parallel={"mode": "distrifusion", "warmup_steps": 5})
    assert job.parallel.warmup_steps == 5


@pytest.mark.parametrize("mode", ["distrifusion", "pcpp"])
def test_displaced_modes_need_a_warmup_step(mode: str) -> None:
    message = error_of({"parallel": {"mode": mode, "warmup_steps": 0}})
    assert message.startswith("parallel.warmup_steps:")
    assert f"mode '{mode}'" in message
    assert "at least one synchronous step to have stale activations" in message
    assert message.endswith("got 0")


@pytest.mark.parametrize("mode", ["single", "naive", "sync"])
def test_other_modes_accept_zero_warmup(mode: str) -> None:
    assert with_(parallel={"mode": mode, "warmup_steps": 0}).parallel.mode == mode


@pytest.mark.parametrize("scale", [0, 1, 1.0])
def test_cfg_parallel_needs_guidance(scale: float) -> None:
    message = error_of(
        {"generation": {"guidance_scale": scale}, "parallel": {"cfg_parallel": True}}
    )
    assert message.startswith("parallel.cfg_parallel: requires generation.guidance_scale > 1")
    assert f"guidance_scale={float(scale)}" in message
    assert message.endswith("got true")


def test_cfg_parallel_with_guidance_loads() -> None:
    job = with_(generation={"guidance_scale": 1.01}, parallel={"cfg_parallel": True})
    assert job.parallel.cfg_parallel is True


def test_cfg_parallel_with_single_mode_rejected() -> None:
    message = error_of({"parallel": {"mode": "single", "cfg_parallel": True}})
    assert message.startswith("parallel.cfg_parallel: mode 'single' runs on one rank")
    assert message.endswith("got true")


# --------------------------------------------------------------------------------------------
# check_ranks


def job_for_ranks(**parallel: Any) -> JobConfig:
    return job_from_dict({"generation": {"height": 160}, "parallel": parallel})


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_check_ranks_accepts_up_to_one_band_per_unit(n: int) -> None:
    check_ranks(job_for_ranks(mode="pcpp"), n, latent_height=20, unit=4)


def test_check_ranks_too_many_bands() -> None:
    with pytest.raises(ConfigError) as info:
        check_ranks(job_for_ranks(mode="pcpp"), 8, latent_height=20, unit=4)
    message = str(info.value)
    assert message.startswith(
        "generation.height: 160 px (20 latent rows, 5 units of 4 rows) allows at most 5 bands; "
        "8 ranks requested"
    )
    assert "use at most 5 ranks" in message


def test_check_ranks_counts_partial_units_down() -> None:
    # 22 latent rows hold 5 whole units of 4 rows
    check_ranks(job_for_ranks(), 5, latent_height=22, unit=4)
    with pytest.raises(ConfigError, match="at most 5 bands"):
        check_ranks(job_for_ranks(), 6, latent_height=22, unit=4)


def test_check_ranks_height_below_one_unit() -> None:
    with pytest.raises(ConfigError) as info:
        check_ranks(job_for_ranks(), 1, latent_height=3, unit=4)
    message = str(info.value)
    assert message.startswith("generation.height: 160 px (3 latent rows)")
    assert "less than one unit of 4 rows" in message


@pytest.mark.parametrize("n", [0, -1])
def test_check_ranks_needs_a_rank(n: int) -> None:
    with pytest.raises(ConfigError, match=f"got {n}"):
        check_ranks(JobConfig(), n, latent_height=16, unit=8)


def test_check_ranks_single_mode_is_one_rank() -> None:
    job = job_for_ranks(mode="single")
    check_ranks(job, 1, latent_height=20, unit=4)
    with pytest.raises(ConfigError) as info:
        check_ranks(job, 2, latent_height=20, unit=4)
    message = str(info.value)
    assert message.startswith("parallel.mode: 'single'")
    assert "got 2 ranks" in message
    assert "use another mode" in message
    assert "1 rank" in message


@pytest.mark.parametrize("mode", ["naive", "sync", "distrifusion", "pcpp"])
def test_check_ranks_one_rank_works_in_every_mode(mode: str) -> None:
    check_ranks(job_for_ranks(mode=mode), 1, latent_height=20, unit=4)


@pytest.mark.parametrize("n", [1, 3, 5])
def test_check_ranks_cfg_parallel_needs_even_count(n: int) -> None:
    job = job_for_ranks(mode="pcpp", cfg_parallel=True)
    with pytest.raises(ConfigError) as info:
        check_ranks(job, n, latent_height=20, unit=4)
    message = str(info.value)
    assert message.startswith("parallel.cfg_parallel:")
    assert "even" in message
    assert f"got {n} ranks" in message


@pytest.mark.parametrize("n", [2, 4, 6, 8, 10])
def test_check_ranks_cfg_parallel_halves_the_bands(n: int) -> None:
    # 5 units: 10 ranks = 5 bands x 2 CFG groups
    check_ranks(job_for_ranks(mode="pcpp", cfg_parallel=True), n, latent_height=20, unit=4)


def test_check_ranks_cfg_parallel_too_many() -> None:
    job = job_for_ranks(mode="sync", cfg_parallel=True)
    with pytest.raises(ConfigError) as info:
        check_ranks(job, 12, latent_height=20, unit=4)
    message = str(info.value)
    assert "allows at most 5 bands" in message
    assert "12 ranks requested (6 bands x 2 CFG groups)" in message
    assert "use at most 10 ranks" in message


def test_check_ranks_rejects_bad_geometry_arguments() -> None:
    with pytest.raises(ValueError, match="unit"):
        check_ranks(JobConfig(), 1, latent_height=16, unit=0)
