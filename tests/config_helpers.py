"""Shared helpers of the configuration tests (``test_config_*.py``)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from pcpp_mpi.config import ConfigError, JobConfig, job_from_dict


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
