"""What a job may hold: unknown keys, value types and literals, and the rules of the ``model`` and
``generation`` sections."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from config_helpers import error_of, with_, write

from pcpp_mpi.config import (
    ConfigError,
    load_job,
)

# --------------------------------------------------------------------------------------------
# Unknown keys and types


def test_unknown_top_level_key() -> None:
    message = error_of({"paralel": {}})
    assert message == (
        "unknown key 'paralel' (known: generation, model, output, parallel, runtime)"
    )


def test_unknown_nested_key_lists_the_known_keys() -> None:
    message = error_of({"parallel": {"ration": 0.5}})
    assert message == (
        "unknown key 'parallel.ration' (known: cfg_parallel, mode, ratio, warmup_steps)"
    )


@pytest.mark.parametrize("section", ["model", "generation", "runtime", "parallel", "output"])
def test_unknown_key_rejected_in_every_section(section: str) -> None:
    message = error_of({section: {"bogus": 1}})
    assert f"unknown key '{section}.bogus'" in message


def test_section_must_be_a_mapping() -> None:
    message = error_of({"parallel": "pcpp"})
    assert message.startswith("parallel:")
    assert "mapping" in message
    assert "'pcpp'" in message


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("generation", "steps", "ten", "generation.steps: expected an integer, got 'ten'"),
        ("generation", "steps", 10.0, "generation.steps: expected an integer, got 10.0"),
        ("generation", "steps", True, "generation.steps: expected an integer, got true"),
        ("generation", "height", None, "generation.height: expected an integer, got null"),
        ("generation", "seed", False, "generation.seed: expected an integer, got false"),
        ("model", "seed", "1", "model.seed: expected an integer, got '1'"),
        ("parallel", "warmup_steps", 1.5, "parallel.warmup_steps: expected an integer, got 1.5"),
        ("parallel", "ratio", "half", "parallel.ratio: expected a number, got 'half'"),
        ("parallel", "ratio", True, "parallel.ratio: expected a number, got true"),
        ("generation", "guidance_scale", [5], "generation.guidance_scale: expected a number"),
        ("parallel", "cfg_parallel", 1, "parallel.cfg_parallel: expected true or false, got 1"),
        ("parallel", "cfg_parallel", "on", "parallel.cfg_parallel: expected true or false"),
        ("output", "png", "yes please", "output.png: expected true or false, got 'yes please'"),
        ("model", "path", 3, "model.path: expected a string, got 3"),
        ("generation", "prompts", 3, "generation.prompts: expected a list, got 3"),
        ("generation", "prompts", ["a", 2], "generation.prompts[1]: expected a string, got 2"),
        ("generation", "negative_prompts", [None], "generation.negative_prompts[0]: expected"),
    ],
)
def test_type_errors_name_key_and_value(section: str, key: str, value: Any, expected: str) -> None:
    data: dict[str, Any] = {section: {key: value}}
    if section == "model" and key != "path":
        data["model"]["builtin"] = "tiny"
    message = error_of(data)
    assert message.startswith(expected), message


def test_non_finite_floats_rejected() -> None:
    message = error_of({"generation": {"guidance_scale": float("inf")}})
    assert message == "generation.guidance_scale: expected a finite number, got inf"
    message = error_of({"parallel": {"ratio": float("nan")}})
    assert message.startswith("parallel.ratio: expected a finite number, got nan")


def test_yaml_exponent_without_dot_is_a_number(tmp_path: Path) -> None:
    # YAML 1.1 (PyYAML) reads 1e-1 as the string '1e-1'; float fields accept it as a number
    path = write(tmp_path, "parallel: {ratio: 1e-1}\n")
    assert load_job(path).parallel.ratio == 0.1
    with pytest.raises(ConfigError, match="expected a number, got 'nan-ish'"):
        load_job(write(tmp_path, "parallel: {ratio: nan-ish}\n"))


def test_ints_accepted_for_floats() -> None:
    job = with_(generation={"guidance_scale": 8}, parallel={"ratio": 0})
    assert job.generation.guidance_scale == 8.0
    assert job.parallel.ratio == 0.0


@pytest.mark.parametrize(
    ("section", "key", "allowed"),
    [
        ("parallel", "mode", "'single', 'naive', 'sync', 'distrifusion', 'pcpp'"),
        ("generation", "scheduler", "'auto', 'ddim', 'euler', 'dpmsolver++', 'flow-euler'"),
        ("runtime", "dtype", "'float32', 'float16', 'bfloat16'"),
        ("runtime", "device", "'cpu', 'cuda'"),
    ],
)
def test_literal_fields_list_the_allowed_values(section: str, key: str, allowed: str) -> None:
    message = error_of({section: {key: "bogus"}})
    assert message == f"{section}.{key}: must be one of {allowed}, got 'bogus'"


def test_literal_fields_in_model() -> None:
    assert error_of({"model": {"builtin": "huge"}}) == (
        "model.builtin: must be one of 'tiny', 'tiny-pixart', got 'huge'"
    )
    message = error_of({"model": {"arch": "sd3", "weights": "random"}})
    assert message == (
        "model.arch: must be one of 'sd15', 'sd21', 'sdxl', 'pixart-sigma', 'sd3-medium', got 'sd3'"
    )
    message = error_of({"model": {"arch": "sdxl", "weights": "pretrained"}})
    assert message == "model.weights: must be one of 'random', got 'pretrained'"


def test_literal_rejects_non_string_values() -> None:
    message = error_of({"runtime": {"device": 0}})
    assert message.startswith("runtime.device: must be one of")
    assert message.endswith("got 0")


def test_long_values_are_shortened_in_messages() -> None:
    message = error_of({"generation": {"steps": "x" * 500}})
    assert message.startswith("generation.steps: expected an integer, got 'xxx")
    assert len(message) < 200


# --------------------------------------------------------------------------------------------
# Model rules


@pytest.mark.parametrize(
    ("model", "got"),
    [
        ({"builtin": "tiny", "path": "/m"}, "got builtin='tiny', path='/m'"),
        ({"path": "/m", "arch": "sd15", "weights": "random"}, "got path='/m', arch='sd15'"),
        ({"seed": 3}, "got none"),
        ({}, "got none"),
    ],
)
def test_model_needs_exactly_one_source(model: dict[str, Any], got: str) -> None:
    message = error_of({"model": model})
    assert message.startswith("model: exactly one of builtin, path, arch")
    assert message.endswith(got)


def test_arch_requires_random_weights() -> None:
    message = error_of({"model": {"arch": "sdxl"}})
    assert message.startswith("model.weights:")
    assert "required with model.arch" in message
    assert "arch='sdxl'" in message
    assert message.endswith("got null")


@pytest.mark.parametrize("model", [{"builtin": "tiny"}, {"path": "/models/sd15"}])
def test_random_weights_forbidden_without_arch(model: dict[str, Any]) -> None:
    message = error_of({"model": {**model, "weights": "random"}})
    assert message.startswith("model.weights: only allowed with model.arch")
    assert message.endswith("got 'random'")


def test_empty_model_path_rejected() -> None:
    assert error_of({"model": {"path": " "}}) == "model.path: must not be empty, got ' '"


@pytest.mark.parametrize("arch", ["sd15", "sd21", "sdxl"])
def test_every_arch_loads(arch: str) -> None:
    assert with_(model={"arch": arch, "weights": "random"}).model.arch == arch


@pytest.mark.parametrize("key", ["model.seed", "generation.seed"])
def test_seeds_must_be_non_negative(key: str) -> None:
    message = error_of(overrides=("model.builtin=tiny", f"{key}=-1"))
    assert message.startswith(f"{key}: must be in [0, 2**64 - 1]")
    assert message.endswith("got -1")


def test_seed_upper_bound() -> None:
    assert with_(generation={"seed": 2**64 - 1}).generation.seed == 2**64 - 1
    message = error_of({"generation": {"seed": 2**64}})
    assert message.endswith(f"got {2**64}")


# --------------------------------------------------------------------------------------------
# Generation rules


@pytest.mark.parametrize("steps", [0, -3])
def test_steps_at_least_one(steps: int) -> None:
    message = error_of({"generation": {"steps": steps}, "parallel": {"mode": "single"}})
    assert message == f"generation.steps: must be >= 1, got {steps}"


def test_one_step_is_fine() -> None:
    job = with_(generation={"steps": 1}, parallel={"mode": "sync", "warmup_steps": 0})
    assert job.generation.steps == 1


@pytest.mark.parametrize("key", ["height", "width"])
@pytest.mark.parametrize("size", [0, 4, 100, 129, -8])
def test_size_multiple_of_eight(key: str, size: int) -> None:
    message = error_of({"generation": {key: size}})
    assert message.startswith(f"generation.{key}: must be a multiple of 8")
    assert message.endswith(f"got {size}")


@pytest.mark.parametrize("steps", [10_001, 10**7, 10**9])
def test_absurd_step_counts_are_refused(steps: int) -> None:
    """A typo such as 10**9 steps must not allocate gigabytes of scheduler tables per rank."""
    message = error_of({"generation": {"steps": steps}})
    assert message == f"generation.steps: must be <= 10000, got {steps}"


def test_largest_step_count_is_accepted() -> None:
    job = with_(generation={"steps": 10_000}, parallel={"warmup_steps": 4})
    assert job.generation.steps == 10_000


@pytest.mark.parametrize("key", ["height", "width"])
def test_absurd_sizes_are_refused(key: str) -> None:
    message = error_of({"generation": {key: 16_392}})
    assert message == f"generation.{key}: must be <= 16384 px, got 16392"
    assert with_(generation={key: 16_384}).generation.height > 0


@pytest.mark.parametrize("size", [8, 64, 136, 4096])
def test_size_accepted(size: int) -> None:
    job = with_(generation={"height": size, "width": size})
    assert (job.generation.height, job.generation.width) == (size, size)


def test_guidance_scale_non_negative() -> None:
    message = error_of({"generation": {"guidance_scale": -0.5}})
    assert message == "generation.guidance_scale: must be >= 0, got -0.5"


@pytest.mark.parametrize("scale", [0, 1, 1.0, 0.5])
def test_guidance_scale_up_to_one_is_allowed(scale: float) -> None:
    assert with_(generation={"guidance_scale": scale}).generation.guidance_scale == scale


def test_prompts_non_empty() -> None:
    message = error_of({"generation": {"prompts": []}})
    assert message.startswith("generation.prompts: must hold at least one prompt")
    assert message.endswith("got []")


def test_empty_string_prompt_is_allowed() -> None:
    assert with_(generation={"prompts": [""]}).generation.prompts == ("",)


@pytest.mark.parametrize(
    ("prompts", "negatives"),
    [(["a", "b", "c"], ["x", "y"]), (["a", "b"], []), (["a"], ["x", "y"])],
)
def test_negative_prompts_length(prompts: list[str], negatives: list[str]) -> None:
    message = error_of({"generation": {"prompts": prompts, "negative_prompts": negatives}})
    assert message.startswith("generation.negative_prompts: expected 1 entry")
    assert f"got {len(negatives)}: {negatives!r}" in message
    if len(prompts) > 1:
        assert f"or {len(prompts)} (one per prompt)" in message
