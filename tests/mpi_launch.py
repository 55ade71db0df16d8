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
    ``env``: the environment (default :func:`mpi_env`). A launch that Open MPI's launcher
    itself could not start (:func:`launcher_failed_to_start`: before any rank ran) is tried
    again, at most :data:`LAUNCH_ATTEMPTS` times in all."""
    command = [mpirun_path(), "-np", str(n), "--oversubscribe", "--bind-to", "none", *args]
    for _ in range(LAUNCH_ATTEMPTS):
        result = subprocess.run(
            command,
            env=env or mpi_env(),
            cwd=cwd or REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if not launcher_failed_to_start(result):
            break
    return result


#: launches of one :func:`mpirun` call when the launcher fails to start
LAUNCH_ATTEMPTS = 3
#: what Open MPI's launcher prints when its PMIx server cannot start (seen once in ~200
#: launches on a loaded 2-core machine, with "ptl_tool: problems getting address"): no rank
#: has run, so nothing of the test's own has happened yet
LAUNCHER_START_FAILURE = "The PMIx server's listener thread failed to start"


def launcher_failed_to_start(result: subprocess.CompletedProcess[str]) -> bool:
    """Whether ``mpirun`` failed before starting any rank because its PMIx server did not."""
    return result.returncode != 0 and LAUNCHER_START_FAILURE in (result.stderr or "")
