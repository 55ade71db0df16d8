"""tools/build_cuda_mpi.sh: its option and input checks, which must fail fast with a clear
message before any download or build, and the configure arguments it forwards (to a fake
``configure`` that fails at once). No build runs here: a real one takes about half an hour on
2 cores (see docs/CUDA_AWARE_MPI.md, "What was tested")."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tools" / "build_cuda_mpi.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def run_script(tmp_path: Path, *args: str | os.PathLike) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_HOME", "CC", "CXX")}
    env.update(HOME=str(tmp_path / "home"), TMPDIR=str(tmp_path))
    t0 = time.monotonic()
    proc = subprocess.run(
        ["bash", str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert time.monotonic() - t0 < 20, "a check took too long: did a build start?"
    return proc


def fake_cuda(tmp_path: Path) -> Path:
    cuda = tmp_path / "cuda"
    (cuda / "include").mkdir(parents=True)
    (cuda / "include" / "cuda.h").write_text("/* not a real toolkit */\n")
    return cuda


def fail(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    for fragment in fragments:
        assert fragment in proc.stderr, (fragment, proc.stderr)


def no_build_dir_left(tmp_path: Path) -> None:
    assert not list(tmp_path.glob("build-ompi.*")), "checks must run before the build directory"


def test_help() -> None:
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--help"], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0
    for option in (
        "--prefix",
        "--cuda",
        "--source",
        "--version",
        "--jobs",
        "--without-cuda",
        "--with-pmix",
        "--with-slurm",
    ):
        assert option in proc.stdout


def test_missing_cuda_dir(tmp_path: Path) -> None:
    tarball = tmp_path / "openmpi-4.1.6.tar.bz2"
    tarball.write_bytes(b"")
    proc = run_script(
        tmp_path,
        "--source",
        tarball,
        "--prefix",
        tmp_path / "p",
        "--cuda",
        tmp_path / "no-such-cuda",
    )
    fail(proc, "CUDA directory", "no-such-cuda", "does not exist", "--cuda")
    no_build_dir_left(tmp_path)


def test_default_cuda_comes_from_cuda_home(tmp_path: Path) -> None:
    env_cuda = tmp_path / "from-env"
    env_cuda.mkdir()  # exists, but holds no include/cuda.h
    env = {k: v for k, v in os.environ.items() if k != "CUDA_HOME"}
    env.update(HOME=str(tmp_path / "home"), TMPDIR=str(tmp_path), CUDA_HOME=str(env_cuda))
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--version", "4.1.6"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    fail(proc, str(env_cuda), "include/cuda.h")
    no_build_dir_left(tmp_path)


def test_cuda_dir_without_header(tmp_path: Path) -> None:
    (tmp_path / "cuda" / "include").mkdir(parents=True)
    proc = run_script(
        tmp_path, "--version", "4.1.6", "--prefix", tmp_path / "p", "--cuda", tmp_path / "cuda"
    )
    fail(proc, "include/cuda.h")
    no_build_dir_left(tmp_path)


def test_existing_nonempty_prefix(tmp_path: Path) -> None:
    prefix = tmp_path / "ompi"
    (prefix / "bin").mkdir(parents=True)
    proc = run_script(
        tmp_path, "--version", "4.1.6", "--prefix", prefix, "--cuda", fake_cuda(tmp_path)
    )
    fail(proc, str(prefix), "not empty", "never overwritten", "--prefix")
    assert (prefix / "bin").is_dir()
    no_build_dir_left(tmp_path)


@pytest.mark.skipif(
    shutil.which("gcc") is None or shutil.which("make") is None,
    reason="the compiler check comes first",
)
def test_missing_tarball(tmp_path: Path) -> None:
    prefix = tmp_path / "empty-prefix"
    prefix.mkdir()  # an empty directory is accepted
    proc = run_script(
        tmp_path,
        "--source",
        tmp_path / "openmpi-4.1.6.tar.bz2",
        "--prefix",
        prefix,
        "--cuda",
        fake_cuda(tmp_path),
    )
    fail(proc, "openmpi-4.1.6.tar.bz2", "does not exist", "open-mpi.org")
    no_build_dir_left(tmp_path)


@pytest.mark.skipif(
    shutil.which("gcc") is None or shutil.which("make") is None,
    reason="the compiler check comes first",
)
def test_tarball_that_is_not_open_mpi(tmp_path: Path) -> None:
    tarball = tmp_path / "openmpi-4.1.6.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        info = tarfile.TarInfo("something-1.0/README")
        data = b"not Open MPI\n"
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    proc = run_script(tmp_path, "--source", tarball, "--prefix", tmp_path / "p", "--without-cuda")
    fail(proc, "configure", "Open MPI release tarball")
    assert not (tmp_path / "p").exists()
    no_build_dir_left(tmp_path)  # removed again: nothing was built


def test_no_source(tmp_path: Path) -> None:
    proc = run_script(tmp_path, "--without-cuda", "--prefix", tmp_path / "p")
    fail(proc, "--source", "--version")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--version", "4.1"], "--version must look like"),
        (["--version", "4.1.6", "--jobs", "0"], "--jobs must be a positive integer"),
        (["--version", "4.1.6", "--bogus"], "unknown option '--bogus'"),
        (["--version", "4.1.6", "--prefix"], "--prefix needs a value"),
        (["--version", "4.1.6", "--source", "x.tar.gz"], "not both"),
    ],
)
def test_bad_options(tmp_path: Path, args: list[str], message: str) -> None:
    fail(run_script(tmp_path, "--without-cuda", *args), message)


def test_pmix_dir_is_checked(tmp_path: Path) -> None:
    proc = run_script(
        tmp_path,
        "--version",
        "4.1.6",
        "--prefix",
        tmp_path / "p",
        "--cuda",
        fake_cuda(tmp_path),
        "--with-pmix",
        tmp_path / "no-pmix",
    )
    fail(proc, "--with-pmix", "include/pmix.h")
    no_build_dir_left(tmp_path)


def fake_source(tmp_path: Path) -> Path:
    """An 'Open MPI source tree' whose configure prints its arguments and fails."""
    src = tmp_path / "openmpi-4.1.9"
    src.mkdir()
    (src / "VERSION").write_text("major=4\nminor=1\nrelease=9\n")
    configure = src / "configure"
    configure.write_text('#!/bin/sh\necho "CONFIGURE-ARGS: $*"\nexit 1\n')
    configure.chmod(0o755)
    return src


@pytest.mark.skipif(
    shutil.which("gcc") is None or shutil.which("make") is None,
    reason="the compiler check comes first",
)
@pytest.mark.parametrize("libevent", [None, "/opt/libevent"])
def test_configure_arguments_and_failure(tmp_path: Path, libevent: str | None) -> None:
    pmix = tmp_path / "pmix"
    (pmix / "include").mkdir(parents=True)
    (pmix / "include" / "pmix.h").write_text("")
    cuda = fake_cuda(tmp_path)
    extra = ["--", f"--with-libevent={libevent}"] if libevent else []
    proc = run_script(
        tmp_path,
        "--source",
        fake_source(tmp_path),
        "--prefix",
        tmp_path / "p",
        "--cuda",
        cuda,
        "--with-pmix",
        pmix,
        "--with-slurm",
        *extra,
    )
    fail(proc, "configure failed", "configure.log")
    args = next(line for line in proc.stderr.splitlines() if "CONFIGURE-ARGS:" in line).split()
    for arg in (
        f"--prefix={tmp_path / 'p'}",
        f"--with-cuda={cuda}",
        "--without-ucx",
        "--disable-mpi-fortran",
        f"--with-pmix={pmix}",
        "--with-slurm",
    ):
        assert arg in args
    libevent_args = [a for a in args if a.startswith("--with-libevent")]
    assert libevent_args == [f"--with-libevent={libevent or 'external'}"]
    assert len(list(tmp_path.glob("build-ompi.*/configure.log"))) == 1  # kept for reading
    assert not (tmp_path / "p").exists()
