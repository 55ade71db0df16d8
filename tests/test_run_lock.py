"""The run directory's lock: one job at a time, stale locks recognised, nothing of a live job
removed (no MPI: jobs are stood in for by real processes and hand-written lock files)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pcpp_mpi.output import prepare_run_dir
from pcpp_mpi.output.run_lock import (
    BREAK_NAME,
    LOCK_NAME,
    LockHolder,
    RunDirLocked,
    RunLock,
    _create,
    _read,
)

HOST = socket.gethostname()


@pytest.fixture
def live_pid() -> Iterator[int]:
    """The pid of a process that runs for the whole test (another job's rank 0)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield process.pid
    process.kill()
    process.wait()


@pytest.fixture
def dead_pid() -> int:
    """The pid of a process that has ended (a killed job's rank 0)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def write_lock(run_dir: Path, host: str, pid: int, **extra: str) -> dict[str, object]:
    holder = {
        "host": host,
        "pid": pid,
        "pid_start": "",
        "slurm_job_id": "",
        "started": "2026-12-07T10:00:00+00:00",
    }
    holder.update(extra)
    (run_dir / LOCK_NAME).write_text(json.dumps(holder))
    return holder


def read_lock(run_dir: Path) -> dict[str, object]:
    return json.loads((run_dir / LOCK_NAME).read_text())


def test_lock_names_this_process_and_is_released(tmp_path: Path) -> None:
    lock = RunLock.acquire(tmp_path)
    held = read_lock(tmp_path)
    job = os.environ.get("SLURM_JOB_ID", "")
    assert (held["host"], held["pid"], held["slurm_job_id"]) == (HOST, os.getpid(), job)
    assert held["pid_start"] != "" and held["started"].endswith("+00:00")
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_second_job_is_refused_naming_the_holder(tmp_path: Path, live_pid: int) -> None:
    write_lock(tmp_path, HOST, live_pid, slurm_job_id="77")
    with pytest.raises(RunDirLocked) as info:
        RunLock.acquire(tmp_path)
    message = str(info.value)
    assert f"in use by another pcpp-mpi job (host {HOST}, pid {live_pid}, Slurm job 77" in message
    assert "started 2026-12-07T10:00:00+00:00" in message
    assert read_lock(tmp_path)["pid"] == live_pid


def test_one_process_cannot_lock_a_directory_twice(tmp_path: Path) -> None:
    first = RunLock.acquire(tmp_path)
    with pytest.raises(RunDirLocked, match=f"pid {os.getpid()}"):
        RunLock.acquire(tmp_path)
    first.release()


def test_break_lock_never_takes_over_a_live_holder_on_this_host(
    tmp_path: Path, live_pid: int
) -> None:
    write_lock(tmp_path, HOST, live_pid)
    with pytest.raises(RunDirLocked, match="in use"):
        RunLock.acquire(tmp_path, break_lock=True)


def test_stale_lock_on_this_host_is_taken_over(tmp_path: Path, dead_pid: int) -> None:
    write_lock(tmp_path, HOST, dead_pid)
    lock = RunLock.acquire(tmp_path)
    assert read_lock(tmp_path)["pid"] == os.getpid()
    assert not (tmp_path / BREAK_NAME).exists()
    lock.release()


def test_reused_pid_is_recognised_by_its_start_time(tmp_path: Path, live_pid: int) -> None:
    """The holder's pid runs again, but as another process (started at another time)."""
    write_lock(tmp_path, HOST, live_pid, pid_start="1")
    RunLock.acquire(tmp_path).release()


def test_lock_from_another_host_needs_break_lock(tmp_path: Path) -> None:
    write_lock(tmp_path, "node-elsewhere", 12345, slurm_job_id="991")
    with pytest.raises(RunDirLocked) as info:
        RunLock.acquire(tmp_path)
    message = str(info.value)
    assert "another host (host node-elsewhere, pid 12345, Slurm job 991" in message
    assert "squeue -j 991" in message and "--break-lock" in message
    assert read_lock(tmp_path)["host"] == "node-elsewhere"
    lock = RunLock.acquire(tmp_path, break_lock=True)
    assert read_lock(tmp_path)["host"] == HOST
    lock.release()


def test_take_over_in_progress_is_refused(tmp_path: Path, dead_pid: int) -> None:
    write_lock(tmp_path, HOST, dead_pid)
    (tmp_path / BREAK_NAME).write_text("{}")
    with pytest.raises(RunDirLocked, match="taking over its stale lock"):
        RunLock.acquire(tmp_path)
    assert read_lock(tmp_path)["pid"] == dead_pid


def test_release_leaves_another_jobs_lock(tmp_path: Path, live_pid: int) -> None:
    lock = RunLock.acquire(tmp_path)
    write_lock(tmp_path, HOST, live_pid)  # someone broke our lock and holds the directory now
    lock.release()
    assert read_lock(tmp_path)["pid"] == live_pid


def test_overwrite_never_removes_a_running_jobs_files(tmp_path: Path, live_pid: int) -> None:
    write_lock(tmp_path, HOST, live_pid)
    for name in ("run.h5", "rank-0000.h5", "image-0000.png"):
        (tmp_path / name).write_text(name)
    with pytest.raises(RunDirLocked, match="in use"):
        prepare_run_dir(tmp_path, overwrite=True)
    for name in ("run.h5", "rank-0000.h5", "image-0000.png"):
        assert (tmp_path / name).read_text() == name


def test_overwrite_after_a_killed_job(tmp_path: Path, dead_pid: int) -> None:
    write_lock(tmp_path, HOST, dead_pid)
    (tmp_path / "run.h5").write_text("old")
    lock = prepare_run_dir(tmp_path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_NAME]
    lock.release()


def test_a_refused_directory_is_left_unlocked(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(Exception, match="not empty"):
        prepare_run_dir(tmp_path, overwrite=False)
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_lock_file_is_never_seen_half_written(tmp_path: Path) -> None:
    """Two jobs started together: the second read the first's lock file between its creation
    and its content and refused with "locked by a job on another host (unreadable lock
    file)". The lock file now appears whole or not at all."""
    path = tmp_path / LOCK_NAME
    me = LockHolder.current()
    seen: list[LockHolder] = []
    done = threading.Event()

    def read_until_done() -> None:
        while not done.is_set():
            holder = _read(path)
            if holder is not None:
                seen.append(holder)

    reader = threading.Thread(target=read_until_done)
    reader.start()
    try:
        for _ in range(400):
            assert _create(path, me)
            assert not _create(path, me)  # exclusive
            path.unlink()
    finally:
        done.set()
        reader.join()
    assert seen, "the reader never saw a lock file: the test proves nothing"
    assert all(holder == me for holder in seen), {h for h in seen if h != me}
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no file of ours left behind
