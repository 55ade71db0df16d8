"""MPI library description, CUDA-awareness detection and the `info` command."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import pcpp_mpi
from pcpp_mpi.comm.mpi_info import (
    CUDA_AWARE_ENV,
    THREAD_LEVEL_NAMES,
    cuda_aware,
    describe_world,
    detect_cuda_aware,
    format_info,
    library_version,
    thread_level_name,
)

REPO_ROOT = Path(pcpp_mpi.__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mpi() -> ModuleType:
    """mpi4py.MPI, initialised (as a singleton when not launched by mpirun)."""
    from mpi4py import MPI

    return MPI


def _launch_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.pop(CUDA_AWARE_ENV, None)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    return env


def _mpirun() -> str | None:
    beside = Path(sys.executable).parent / "mpirun"
    if beside.exists():
        return str(beside)
    return shutil.which("mpirun")


# -- thread levels -----------------------------------------------------------------------------


def test_thread_level_names(mpi: ModuleType) -> None:
    assert thread_level_name(mpi.THREAD_SINGLE) == "MPI_THREAD_SINGLE"
    assert thread_level_name(mpi.THREAD_FUNNELED) == "MPI_THREAD_FUNNELED"
    assert thread_level_name(mpi.THREAD_SERIALIZED) == "MPI_THREAD_SERIALIZED"
    assert thread_level_name(mpi.THREAD_MULTIPLE) == "MPI_THREAD_MULTIPLE"
    assert thread_level_name(12345) == "MPI_THREAD_UNKNOWN(12345)"


def test_thread_level_names_without_mpi_loaded() -> None:
    code = (
        "import sys\n"
        "from pcpp_mpi.comm.mpi_info import thread_level_name\n"
        "print(','.join(thread_level_name(i) for i in range(4)))\n"
        "assert 'mpi4py.MPI' not in sys.modules\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=_launch_env(),
        check=True,
    )
    assert result.stdout.strip() == ",".join(THREAD_LEVEL_NAMES)


# -- CUDA-awareness ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1", True), ("0", False), ("true", True), ("off", False), (" 1 ", True)],
)
def test_cuda_aware_env_override(monkeypatch: pytest.MonkeyPatch, raw: str, expected: bool) -> None:
    monkeypatch.setenv(CUDA_AWARE_ENV, raw)
    assert cuda_aware() is expected
    assert detect_cuda_aware().source == CUDA_AWARE_ENV


def test_cuda_aware_argument_beats_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CUDA_AWARE_ENV, "1")
    assert cuda_aware(False) is False
    monkeypatch.setenv(CUDA_AWARE_ENV, "0")
    assert cuda_aware(True) is True
    assert detect_cuda_aware(True).source == "argument"


def test_cuda_aware_bad_env_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CUDA_AWARE_ENV, "maybe")
    with pytest.raises(ValueError, match=rf"{CUDA_AWARE_ENV} must be 0 or 1, got 'maybe'"):
        cuda_aware()


def test_cuda_aware_from_library(monkeypatch: pytest.MonkeyPatch, mpi: ModuleType) -> None:
    monkeypatch.delenv(CUDA_AWARE_ENV, raising=False)
    result = detect_cuda_aware()
    assert result.value is None or isinstance(result.value, bool)
    assert cuda_aware() == result.value
    if library_version().startswith("Open MPI"):
        # Open MPI builds its CUDA extension whether or not CUDA support is built in.
        assert result.source == "MPIX_Query_cuda_support"
        assert isinstance(result.value, bool)


def test_cuda_aware_unknown_before_mpi_init() -> None:
    code = (
        "from pcpp_mpi.comm.mpi_info import detect_cuda_aware\n"
        "r = detect_cuda_aware()\n"
        "print(r.value, r.source)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=_launch_env(),
        check=True,
    )
    assert result.stdout.strip() == "None unknown (MPI not initialised)"


# -- describe_world ----------------------------------------------------------------------------


def test_describe_world_on_comm_self(mpi: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CUDA_AWARE_ENV, raising=False)
    info = describe_world(mpi.COMM_SELF)
    assert info.world_size == 1
    assert len(info.ranks) == 1
    rank = info.ranks[0]
    assert rank.rank == 0
    assert rank.host == socket.gethostname()
    assert rank.pid == os.getpid()
    import torch

    if not torch.cuda.is_available():
        assert rank.devices == ("cpu",)
    assert info.library_version
    assert "\x00" not in info.library_version
    assert "\n" not in info.library_version
    major, minor = mpi.Get_version()
    assert info.mpi_version == f"{major}.{minor}"
    assert info.thread_level == mpi.Query_thread()
    assert info.hosts == (socket.gethostname(),)

    provenance = info.to_provenance()
    assert json.loads(json.dumps(provenance)) == provenance
    assert provenance["n_ranks"] == 1
    assert provenance["ranks"][0]["host"] == socket.gethostname()
    assert provenance["mpi_thread_level"] == thread_level_name(mpi.Query_thread())

    report = format_info(info)
    assert info.library_version in report
    assert "World size:    1 rank on 1 host" in report
    # a CUDA-aware library on ranks without a GPU is reported as such
    without_gpu = dataclasses.replace(
        info,
        cuda_aware=True,
        ranks=tuple(dataclasses.replace(r, devices=("cpu",)) for r in info.ranks),
    )
    assert "yes [" in format_info(without_gpu)
    assert "(no rank sees a GPU: unused)" in format_info(without_gpu)
    with_gpu = dataclasses.replace(
        without_gpu,
        ranks=tuple(dataclasses.replace(r, devices=("NVIDIA H200",)) for r in info.ranks),
    )
    assert "unused" not in format_info(with_gpu)
    rank_lines = [line for line in report.splitlines() if line.strip().startswith("rank ")]
    assert len(rank_lines) == 1
    assert socket.gethostname() in rank_lines[0]


# -- the info command --------------------------------------------------------------------------


def test_info_command_single_process(capsys: pytest.CaptureFixture[str], mpi: ModuleType) -> None:
    from pcpp_mpi.commands.info import run_info_command

    assert run_info_command() == 0
    out = capsys.readouterr().out
    assert "MPI library:" in out
    assert "rank 0" in out
    assert "Packages:" in out
    assert "mpi4py" in out


def test_info_command_without_launcher() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pcpp_mpi.cli", "info"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_launch_env(),
        cwd=REPO_ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "World size:    1 rank on 1 host" in result.stdout
    # MPI_THREAD_MULTIPLE was requested before mpi4py.MPI was imported.
    assert "Thread level:  MPI_THREAD_MULTIPLE" in result.stdout or "note:" in result.stdout


@pytest.mark.mpi
def test_info_command_under_mpirun_two_ranks() -> None:
    mpirun = _mpirun()
    if mpirun is None:
        pytest.skip("mpirun not found")
    result = subprocess.run(
        [mpirun, "-np", "2", "--oversubscribe", sys.executable, "-m", "pcpp_mpi.cli", "info"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_launch_env(),
        cwd=REPO_ROOT,
        check=False,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    out = result.stdout
    assert "Open MPI" in out
    assert "World size:    2 ranks" in out
    rank_lines = [line.strip() for line in out.splitlines() if line.strip().startswith("rank ")]
    assert [line.split()[1] for line in rank_lines] == ["0", "1"]
    assert out.count("MPI library:") == 1  # printed by rank 0 only
