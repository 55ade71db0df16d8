"""Launching ``mpirun`` from tests: the wheel's or the system's, oversubscribed, with a timeout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def mpirun_path() -> str:
    beside = Path(sys.executable).parent / "mpirun"
    if beside.exists():
        return str(beside)
    found = shutil.which("mpirun")
    if found is None:
        raise RuntimeError("no mpirun found beside the Python interpreter or on PATH")
    return found


def mpi_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OMPI_ALLOW_RUN_AS_ROOT="1",
        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p),
    )
    return env


def mpirun(
    n: int,
    args: Sequence[str],
    *,
    timeout: float = 600,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``args`` on ``n`` ranks; returns the completed process (stdout and stderr text).
    ``env``: the environment (default :func:`mpi_env`)."""
    command = [mpirun_path(), "-np", str(n), "--oversubscribe", "--bind-to", "none", *args]
    return subprocess.run(
        command,
        env=env or mpi_env(),
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
