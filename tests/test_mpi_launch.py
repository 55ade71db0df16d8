"""The tests' ``mpirun`` helper retries only a launch whose launcher never started a rank."""

from __future__ import annotations

import subprocess

from mpi_launch import LAUNCHER_START_FAILURE, launcher_failed_to_start


def _done(code: int, stderr: str) -> subprocess.CompletedProcess[str]:
    return subprocess.CompletedProcess(["mpirun"], code, "", stderr)


def test_only_the_launchers_own_start_failure_is_retried() -> None:
    banner = f"----\n{LAUNCHER_START_FAILURE}. We cannot\ncontinue.\n----\n"
    assert launcher_failed_to_start(_done(213, banner))
    assert not launcher_failed_to_start(_done(0, banner))  # it ran after all
    assert not launcher_failed_to_start(_done(1, "Traceback ...\nValueError: bad job"))
    assert not launcher_failed_to_start(_done(2, "pcpp-mpi: error: generation.height"))
