"""Soak: many consecutive small jobs leave no processes, temporary files or handles behind.

Each job is a separate ``mpirun`` launch (start-up and shutdown are what can leak); the jobs
cycle through the parallel modes so every exchange path is started and torn down. Only what
the test's own processes create is checked (they carry a token in their environment and use a
private TMPDIR): other MPI jobs on the machine come and go meanwhile.
"""

from __future__ import annotations

import fnmatch
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
import yaml
from mpi_launch import mpi_env, mpirun

from pcpp_mpi.output import read_run

pytestmark = pytest.mark.mpi

JOBS = 10
MODES = ("pcpp", "distrifusion", "sync", "naive")
RANKS = 4
TOKEN_VARIABLE = "PCPP_SOAK_TOKEN"
#: Temporary-directory entries that are caches kept across processes by design, not leaks:
#: torch's per-user compile cache (``torchinductor_USER``), made by the first job and reused.
KEPT_CACHES = ("torchinductor_*",)


def _processes_carrying(token: str) -> set[int]:
    """Pids of the processes whose environment holds ``SOAK_TOKEN=token``: the test's own
    launchers, daemons and ranks (they inherit it), never another job's."""
    marker = f"{TOKEN_VARIABLE}={token}".encode()
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # ended meanwhile, or not ours to read
            continue
        if marker in environ.split(b"\0"):
            pids.add(int(entry.name))
    return pids


def _leftovers(token: str, temp_dir: Path) -> tuple[set[int], list[str]]:
    """What the test's own processes left: live processes, and entries in their TMPDIR other
    than the per-user caches that are made once and kept by design (:data:`KEPT_CACHES`)."""
    files = [
        p.name
        for p in temp_dir.iterdir()
        if not any(fnmatch.fnmatchcase(p.name, pattern) for pattern in KEPT_CACHES)
    ]
    return _processes_carrying(token), sorted(files)


def _soak_env(token: str, temp_dir: Path) -> dict[str, str]:
    """The jobs' environment: marked with ``token`` and with a private TMPDIR (Python's
    tempfile and Open MPI's session directories go there), so what they leave behind can be
    told apart from what other jobs on the machine do at the same time."""
    return mpi_env() | {TOKEN_VARIABLE: token, "TMPDIR": str(temp_dir)}


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_leak_check_sees_only_the_tests_own_processes_and_files(tmp_path: Path) -> None:
    """Another MPI job running meanwhile (its processes, its ``ompi.*`` folder in /tmp) is
    not a leak of this test; a process or file of the test's own is."""
    token = uuid.uuid4().hex
    temp_dir = tmp_path / "tmp"
    temp_dir.mkdir()
    foreign_dir = Path(tempfile.mkdtemp(prefix="ompi.soak-foreign.", dir="/tmp"))
    foreign = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)", "pcpp_mpi.cli", "prted"]
    )
    try:
        assert _leftovers(token, temp_dir) == (set(), [])
        mine = subprocess.Popen(
            [sys.executable, "-c", SPAWN_LEAK, "pcpp_mpi.cli"],
            env=_soak_env(token, temp_dir),
            stdout=subprocess.PIPE,
            text=True,
        )
        leaked_pid = int(mine.stdout.readline()) if mine.stdout else -1
        processes, files = _leftovers(token, temp_dir)
        assert leaked_pid in processes and foreign.pid not in processes
        assert len(files) == 1 and files[0].startswith("leak")
        mine.kill()
        mine.wait()
    finally:
        foreign.kill()
        foreign.wait()
        foreign_dir.rmdir()


SPAWN_LEAK = """
import os, tempfile, time
tempfile.mkstemp(prefix="leak")
print(os.getpid(), flush=True)
time.sleep(120)
"""


def test_ten_jobs_on_four_ranks_leave_nothing_behind(tmp_path: Path) -> None:
    token = uuid.uuid4().hex
    temp_dir = tmp_path / "tmp"
    temp_dir.mkdir()
    env = _soak_env(token, temp_dir)
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
            env=env,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        run = read_run(out / "run.h5")
        assert run.status == "complete"
        assert yaml.safe_load(run.config_yaml)["parallel"]["mode"] == mode
    processes, files = _leftovers(token, temp_dir)
    assert processes == set(), f"processes left behind: {sorted(processes)}"
    assert files == [], f"temporary files left behind: {files}"
    assert _open_fds() == before_fds
