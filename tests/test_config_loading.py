"""Loading a job: the defaults, plain files and dicts, and errors in the file itself (missing,
malformed YAML, duplicate keys, not UTF-8)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from config_helpers import with_, write

from pcpp_mpi.config import (
    ConfigError,
    GenerationConfig,
    JobConfig,
    ModelConfig,
    OutputConfig,
    ParallelConfig,
    RuntimeConfig,
    job_from_dict,
    load_job,
    validate_job,
)

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
