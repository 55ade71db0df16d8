"""Tests for the job configuration: loading, overrides, validation, round trip, rank checks."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml

from pcpp_mpi.config import (
    ConfigError,
    GenerationConfig,
    JobConfig,
    ModelConfig,
    OutputConfig,
    ParallelConfig,
    RuntimeConfig,
    check_ranks,
    job_from_dict,
    job_to_dict,
    job_to_yaml,
    load_job,
    validate_job,
)
from pcpp_mpi.config.modes import DISPLACED_MODES, MODE_RULES, MODES, SPLIT_MODES, mode_rule
from pcpp_mpi.config.schema import ModeName


def write(tmp_path: Path, text: str, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def error_of(data: dict[str, Any] | None = None, overrides: tuple[str, ...] = ()) -> str:
    """The message of the ConfigError that building ``data`` with ``overrides`` raises."""
    with pytest.raises(ConfigError) as info:
        job_from_dict(data or {}, overrides)
    return str(info.value)


def with_(**sections: dict[str, Any]) -> JobConfig:
    return job_from_dict(sections)


# --------------------------------------------------------------------------------------------
# Defaults and plain loading


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_empty_mapping_gives_the_defaults() -> None:
    job = job_from_dict({})
    assert job == JobConfig()
    assert job.model == ModelConfig(builtin="tiny")
    assert job.model.source == "builtin"
    assert job.parallel.mode == "pcpp"
    assert job.parallel.ratio == 0.3
    assert job.generation.prompts == ("a red circle at the top left on a blue background",)
    assert job.generation.negative_prompts == ("",)


def test_empty_file_and_comment_only_file_give_the_defaults(tmp_path: Path) -> None:
    assert load_job(write(tmp_path, "", "empty.yaml")) == JobConfig()
    assert load_job(write(tmp_path, "# nothing here\n", "comments.yaml")) == JobConfig()


def test_null_section_keeps_its_default(tmp_path: Path) -> None:
    job = load_job(write(tmp_path, "model:\nparallel:\n"))
    assert job == JobConfig()


def test_default_job_validates() -> None:
    assert validate_job(JobConfig()) == JobConfig()


def test_full_file_loads(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        model:
          arch: sdxl
          weights: random
          seed: 7
        generation:
          prompts: [a cat, a dog]
          negative_prompts: [blurry, ugly]
          height: 1024
          width: 512
          steps: 50
          guidance_scale: 7
          scheduler: euler
          seed: 3
        runtime:
          dtype: bfloat16
          device: cuda
        parallel:
          mode: distrifusion
          warmup_steps: 1
          ratio: 1
          cfg_parallel: true
        output:
          png: false
        """,
    )
    job = load_job(path)
    assert job.model == ModelConfig(arch="sdxl", weights="random", seed=7)
    assert job.model.source == "arch"
    assert job.generation == GenerationConfig(
        prompts=("a cat", "a dog"),
        negative_prompts=("blurry", "ugly"),
        height=1024,
        width=512,
        steps=50,
        guidance_scale=7.0,
        scheduler="euler",
        seed=3,
    )
    assert job.runtime == RuntimeConfig(dtype="bfloat16", device="cuda")
    assert job.parallel == ParallelConfig(
        mode="distrifusion", warmup_steps=1, ratio=1.0, cfg_parallel=True
    )
    assert job.output == OutputConfig(png=False)
    # ints are accepted for floats and stored as floats
    assert isinstance(job.generation.guidance_scale, float)
    assert isinstance(job.parallel.ratio, float)
    # YAML lists become tuples (the dataclasses are frozen and hashable)
    assert isinstance(job.generation.prompts, tuple)
    hash(job)


def test_path_model_is_not_checked_for_existence(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-model")
    job = with_(model={"path": missing})
    assert job.model.path == missing
    assert job.model.source == "path"


def test_load_job_accepts_str_and_path(tmp_path: Path) -> None:
    path = write(tmp_path, "parallel: {mode: sync}\n")
    assert load_job(str(path)) == load_job(path)
    assert load_job(path).parallel.mode == "sync"


def test_single_string_prompt_becomes_one_element_tuple() -> None:
    job = with_(generation={"prompts": "a cat", "negative_prompts": "blurry"})
    assert job.generation.prompts == ("a cat",)
    assert job.generation.negative_prompts == ("blurry",)


def test_negative_prompt_of_length_one_is_broadcast_but_stored_as_given() -> None:
    job = with_(generation={"prompts": ["a", "b", "c"], "negative_prompts": ["x"]})
    assert job.generation.negative_prompts == ("x",)


def test_negative_prompts_one_per_prompt() -> None:
    job = with_(generation={"prompts": ["a", "b"], "negative_prompts": ["x", "y"]})
    assert job.generation.negative_prompts == ("x", "y")


def test_low_precision_on_cpu_is_allowed() -> None:
    for dtype in ("float16", "bfloat16"):
        assert with_(runtime={"dtype": dtype, "device": "cpu"}).runtime.dtype == dtype


def test_job_from_dict_does_not_modify_its_input() -> None:
    data = {"parallel": {"mode": "sync"}}
    job_from_dict(data, ["parallel.ratio=0.5", "generation.steps=3"])
    assert data == {"parallel": {"mode": "sync"}}


def test_loading_imports_neither_torch_nor_mpi4py(tmp_path: Path) -> None:
    path = write(tmp_path, "parallel: {mode: pcpp, ratio: 0.5}\n")
    code = textwrap.dedent(
        f"""
        import sys
        from pcpp_mpi.config import load_job, job_to_yaml, check_ranks
        job = load_job({str(path)!r}, ["generation.steps=5"])
        job_to_yaml(job)
        check_ranks(job, 2, 16, 4)
        bad = [m for m in ("torch", "mpi4py", "diffusers") if m in sys.modules]
        assert not bad, bad
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


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
# File errors


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError, match="not found") as info:
        load_job(path)
    assert str(path) in str(info.value)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_job(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "parallel:\n  mode: pcpp\n    ratio: 0.5\n")
    with pytest.raises(ConfigError) as info:
        load_job(path)
    message = str(info.value)
    assert str(path) in message
    assert "line 3" in message


def test_unclosed_flow_list_names_a_line(tmp_path: Path) -> None:
    path = write(tmp_path, "generation:\n  prompts: [a, b\n  steps: 3\n")
    with pytest.raises(ConfigError) as info:
        load_job(path)
    assert str(path) in str(info.value)
    assert "line " in str(info.value)


def test_duplicate_key_is_rejected_with_both_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "parallel:\n  ratio: 0.5\n  ratio: 0.6\n")
    with pytest.raises(ConfigError) as info:
        load_job(path)
    message = str(info.value)
    assert str(path) in message
    assert "duplicate key 'ratio'" in message
    assert "line 3" in message
    assert "first on line 2" in message


def test_same_key_in_different_sections_is_fine(tmp_path: Path) -> None:
    path = write(tmp_path, "model: {builtin: tiny, seed: 1}\ngeneration: {seed: 2}\n")
    job = load_job(path)
    assert (job.model.seed, job.generation.seed) == (1, 2)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just text\n", "42\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match="mapping") as info:
        load_job(path)
    assert str(path) in str(info.value)


def test_job_from_dict_rejects_non_mapping() -> None:
    with pytest.raises(ConfigError, match="mapping"):
        job_from_dict(["parallel"])  # type: ignore[arg-type]


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("generation: {prompts: [caf\xe9]}\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_job(path)
    assert str(path) in str(info.value)


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
        ("generation", "scheduler", "'ddim', 'euler', 'dpmsolver++'"),
        ("runtime", "dtype", "'float32', 'float16', 'bfloat16'"),
        ("runtime", "device", "'cpu', 'cuda'"),
    ],
)
def test_literal_fields_list_the_allowed_values(section: str, key: str, allowed: str) -> None:
    message = error_of({section: {key: "bogus"}})
    assert message == f"{section}.{key}: must be one of {allowed}, got 'bogus'"


def test_literal_fields_in_model() -> None:
    assert error_of({"model": {"builtin": "huge"}}) == (
        "model.builtin: must be one of 'tiny', got 'huge'"
    )
    message = error_of({"model": {"arch": "sd3", "weights": "random"}})
    assert message == "model.arch: must be one of 'sd15', 'sd21', 'sdxl', got 'sd3'"
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


# --------------------------------------------------------------------------------------------
# Serialisation


ROUND_TRIP_JOBS = [
    JobConfig(),
    job_from_dict(
        {
            "model": {"arch": "sdxl", "weights": "random", "seed": 11},
            "generation": {
                "prompts": ["yes", "null", "1.5", "a: b", "café ☕", "", "  spaced  "],
                "negative_prompts": ["no"],
                "height": 2048,
                "width": 1024,
                "steps": 50,
                "guidance_scale": 7,
                "scheduler": "dpmsolver++",
                "seed": 2**63,
            },
            "runtime": {"dtype": "float16", "device": "cuda"},
            "parallel": {"mode": "pcpp", "warmup_steps": 50, "ratio": 1, "cfg_parallel": True},
            "output": {"png": False},
        }
    ),
    job_from_dict({"model": {"path": "/models/sd 1.5"}, "parallel": {"mode": "naive"}}),
]


@pytest.mark.parametrize("job", ROUND_TRIP_JOBS)
def test_yaml_round_trip(job: JobConfig) -> None:
    text = job_to_yaml(job)
    assert isinstance(text, str)
    assert job_from_dict(yaml.safe_load(text)) == job


@pytest.mark.parametrize("job", ROUND_TRIP_JOBS)
def test_yaml_round_trip_through_a_file(tmp_path: Path, job: JobConfig) -> None:
    path = tmp_path / "resolved.yaml"
    path.write_text(job_to_yaml(job), encoding="utf-8")
    assert load_job(path) == job


def test_yaml_lists_every_key_in_schema_order() -> None:
    data = yaml.safe_load(job_to_yaml(JobConfig()))
    assert list(data) == [f.name for f in dataclasses.fields(JobConfig)]
    for f in dataclasses.fields(JobConfig):
        section = getattr(JobConfig(), f.name)
        assert list(data[f.name]) == [g.name for g in dataclasses.fields(section)]
    assert data["generation"]["prompts"] == list(GenerationConfig().prompts)
    assert data["model"]["path"] is None


def test_job_to_dict_is_plain_data() -> None:
    data = job_to_dict(JobConfig())
    assert isinstance(data["generation"]["prompts"], list)
    assert data["parallel"] == {
        "mode": "pcpp",
        "warmup_steps": 4,
        "ratio": 0.3,
        "cfg_parallel": False,
    }


def test_validate_job_checks_jobs_built_in_code() -> None:
    good = JobConfig(parallel=ParallelConfig(mode="sync", ratio=1))  # int ratio
    checked = validate_job(good)
    assert checked == good
    assert isinstance(checked.parallel.ratio, float)
    with pytest.raises(ConfigError, match=r"parallel\.ratio: must be in \[0, 1\], got 2"):
        validate_job(JobConfig(parallel=ParallelConfig(ratio=2.0)))
    with pytest.raises(ConfigError, match="model: exactly one"):
        validate_job(JobConfig(model=ModelConfig()))


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


# --------------------------------------------------------------------------------------------
# docs/CONFIG.md stays in step with the schema

CONFIG_DOC = Path(__file__).resolve().parents[1] / "docs" / "CONFIG.md"


def doc_yaml_blocks() -> list[str]:
    text = CONFIG_DOC.read_text(encoding="utf-8")
    return [block.split("```", 1)[0] for block in text.split("```yaml\n")[1:]]


@pytest.mark.skipif(not CONFIG_DOC.exists(), reason="docs/CONFIG.md not present")
def test_doc_examples_load() -> None:
    blocks = doc_yaml_blocks()
    assert len(blocks) == 3
    jobs = [job_from_dict(yaml.safe_load(block)) for block in blocks]
    assert [job.model.source for job in jobs] == ["builtin", "path", "arch"]
    assert jobs[2].parallel.cfg_parallel
    check_ranks(jobs[2], 4, latent_height=jobs[2].generation.height // 8, unit=4)


@pytest.mark.skipif(not CONFIG_DOC.exists(), reason="docs/CONFIG.md not present")
def test_doc_describes_every_key() -> None:
    text = CONFIG_DOC.read_text(encoding="utf-8")
    for section in dataclasses.fields(JobConfig):
        assert f"## `{section.name}`" in text
        for key in dataclasses.fields(getattr(JobConfig(), section.name)):
            assert f"| `{key.name}` |" in text, f"{section.name}.{key.name} undocumented"
