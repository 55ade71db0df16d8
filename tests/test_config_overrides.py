"""``--set KEY=VALUE`` overrides: values, sections, types and malformed overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
from config_helpers import error_of, write

from pcpp_mpi.config import (
    ConfigError,
    ModelConfig,
    ParallelConfig,
    job_from_dict,
    load_job,
)

# --------------------------------------------------------------------------------------------
# --set overrides


def test_override_scalar(tmp_path: Path) -> None:
    path = write(tmp_path, "parallel: {ratio: 0.3}\n")
    assert load_job(path, ["parallel.ratio=0.5"]).parallel.ratio == 0.5


def test_override_creates_missing_section(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    job = load_job(path, ["parallel.mode=sync", "generation.steps=3"])
    assert job.parallel.mode == "sync"
    assert job.generation.steps == 3
    # untouched keys keep their defaults
    assert job.parallel.ratio == ParallelConfig().ratio


def test_override_list_and_single_string() -> None:
    job = job_from_dict({}, ["generation.prompts=[a cat, 'a dog, sleeping']"])
    assert job.generation.prompts == ("a cat", "a dog, sleeping")
    job = job_from_dict({}, ["generation.prompts=a cat on a mat"])
    assert job.generation.prompts == ("a cat on a mat",)


@pytest.mark.parametrize(("text", "value"), [("true", True), ("false", False), ("yes", True)])
def test_override_booleans(text: str, value: bool) -> None:
    job = job_from_dict({}, [f"parallel.cfg_parallel={text}"])
    assert job.parallel.cfg_parallel is value


def test_override_value_keeps_equals_signs() -> None:
    job = job_from_dict({}, ["generation.prompts=[x=y]"])
    assert job.generation.prompts == ("x=y",)


def test_later_override_wins() -> None:
    job = job_from_dict({}, ["parallel.ratio=0.1", "parallel.ratio=0.9"])
    assert job.parallel.ratio == 0.9


def test_override_into_missing_model_section_needs_a_source() -> None:
    # a model section made by --set starts empty, not from the default builtin: tiny
    message = error_of(overrides=("model.seed=3",))
    assert message.startswith("model: exactly one of builtin, path, arch")
    assert message.endswith("got none")
    assert job_from_dict({}, ["model.path=/m"]).model == ModelConfig(path="/m")


def test_override_null_and_switch_model_source(tmp_path: Path) -> None:
    path = write(tmp_path, "model: {builtin: tiny}\n")
    job = load_job(path, ["model.builtin=null", "model.arch=sd15", "model.weights=random"])
    assert job.model == ModelConfig(arch="sd15", weights="random")
    # forgetting to clear the old source is an error naming both
    with pytest.raises(ConfigError) as info:
        load_job(path, ["model.path=/m"])
    assert "builtin='tiny', path='/m'" in str(info.value)


def test_override_whole_section_merges() -> None:
    job = job_from_dict(
        {"parallel": {"mode": "sync", "ratio": 0.7}}, ["parallel={warmup_steps: 2}"]
    )
    assert job.parallel == ParallelConfig(mode="sync", ratio=0.7, warmup_steps=2)


def test_override_value_is_type_checked() -> None:
    message = error_of(overrides=("generation.steps=ten",))
    assert message == "generation.steps: expected an integer, got 'ten'"
    message = error_of(overrides=("parallel.ratio=1.5",))
    assert message == "parallel.ratio: must be in [0, 1], got 1.5"


def test_override_without_equals() -> None:
    message = error_of(overrides=("parallel.ratio",))
    assert "'parallel.ratio'" in message
    assert "KEY=VALUE" in message


def test_override_unknown_key() -> None:
    message = error_of(overrides=("parallel.ration=0.5",))
    assert "parallel.ration=0.5" in message
    assert "unknown key 'parallel.ration' (known: cfg_parallel, mode, ratio, warmup_steps)" in (
        message
    )
    message = error_of(overrides=("paralel.ratio=0.5",))
    assert "unknown key 'paralel'" in message


def test_override_into_a_value() -> None:
    message = error_of(overrides=("parallel.ratio.x=1",))
    assert "parallel.ratio.x=1" in message
    assert "'parallel.ratio' is a value" in message


@pytest.mark.parametrize("override", ["=1", ".ratio=1", "parallel..ratio=1", "parallel.=1"])
def test_override_malformed_key(override: str) -> None:
    message = error_of(overrides=(override,))
    assert repr(override) in message
    assert "malformed key" in message


def test_override_unparsable_value() -> None:
    message = error_of(overrides=("generation.prompts=[a, b",))
    assert "generation.prompts=[a, b" in message
    assert "cannot parse" in message


def test_override_into_non_mapping_section() -> None:
    message = error_of({"parallel": 3}, ("parallel.ratio=0.5",))
    assert "parallel: expected a mapping, got 3" in message


def test_override_empty_value_is_null() -> None:
    message = error_of(overrides=("parallel.mode=",))
    assert message.startswith("parallel.mode: must be one of")
    assert message.endswith("got null")


def test_override_as_plain_string_is_one_override() -> None:
    job = job_from_dict({}, "parallel.ratio=0.25")  # type: ignore[arg-type]
    assert job.parallel.ratio == 0.25
