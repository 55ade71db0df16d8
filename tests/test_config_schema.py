"""The schema written out: YAML round trips, ``job_to_dict``, ``validate_job`` for jobs built in
code, and docs/CONFIG.md in step with the schema."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from pcpp_mpi.config import (
    ConfigError,
    GenerationConfig,
    JobConfig,
    ModelConfig,
    ParallelConfig,
    check_ranks,
    job_from_dict,
    job_to_dict,
    job_to_yaml,
    load_job,
    validate_job,
)

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
