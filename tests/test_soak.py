"""Soak: many consecutive small jobs leave no processes, temporary files or handles behind.

Each job is a separate ``mpirun`` launch (start-up and shutdown are what can leak); the jobs
cycle through the parallel modes so every exchange path is started and torn down.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from mpi_launch import mpirun

from pcpp_mpi.output import read_run

pytestmark = pytest.mark.mpi

JOBS = 10
MODES = ("pcpp", "distrifusion", "sync", "naive")
RANKS = 4


def _our_processes() -> set[int]:
    """Pids of processes running pcpp-mpi or Open MPI's launcher daemons (not ours)."""
    result = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True)
    pids = set()
    for line in result.stdout.splitlines():
        pid, _, args = line.strip().partition(" ")
        if int(pid) != os.getpid() and ("pcpp_mpi.cli" in args or "prted" in args):
            pids.add(int(pid))
    return pids


def _temp_entries() -> set[str]:
    return set(os.listdir(tempfile.gettempdir()))


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_ten_jobs_on_four_ranks_leave_nothing_behind(tmp_path: Path) -> None:
    before_processes = _our_processes()
    before_temp = _temp_entries()
    before_fds = _open_fds()
    for index in range(JOBS):
        mode = MODES[index % len(MODES)]
        out = tmp_path / f"run{index:02d}"
        result = mpirun(
            RANKS,
            [
                sys.executable,
                "-m",
                "pcpp_mpi.cli",
                "run",
                "jobs/tiny.yaml",
                "--out",
                str(out),
                "--no-progress",
                "--set",
                "generation.steps=5",
                "--set",
                "generation.height=128",
                "--set",
                "generation.width=32",
                "--set",
                f"generation.seed={index}",
                "--set",
                f"parallel.mode={mode}",
            ],
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        run = read_run(out / "run.h5")
        assert run.status == "complete"
        assert yaml.safe_load(run.config_yaml)["parallel"]["mode"] == mode
    assert _our_processes() - before_processes == set()
    left = {name for name in _temp_entries() - before_temp if not name.startswith("pytest-")}
    assert left == set(), f"temporary files left behind: {sorted(left)}"
    assert _open_fds() == before_fds
