"""What ``pip install .`` installs, without this checkout: the wheel is built and unpacked in a
temporary directory, and every ``pcpp-mpi`` subcommand answers ``--help`` from there."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from mpi_launch import REPO
from test_tools import SUBCOMMANDS

#: What the ``pcpp-mpi`` console script runs (entry_points.txt names ``pcpp_mpi.cli:main``).
ENTRY = "import sys; from pcpp_mpi.cli import main; sys.exit(main(sys.argv[1:]))"


@pytest.fixture(scope="module")
def unpacked_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("wheel")
    # a copy of what the wheel is built from, so no build/ directory lands in the checkout
    source = root / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "pcpp_mpi", source / "pcpp_mpi", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    done = subprocess.run(
        [*build, "-w", str(root), str(source)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = root.glob("pcpp_mpi-*.whl")
    site = root / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    return site


def test_the_wheel_holds_the_commands_and_no_repository_scripts(unpacked_wheel: Path) -> None:
    (info,) = unpacked_wheel.glob("pcpp_mpi-*.dist-info")
    assert "pcpp-mpi = pcpp_mpi.cli:main" in (info / "entry_points.txt").read_text()
    names = {p.relative_to(unpacked_wheel).as_posix() for p in unpacked_wheel.rglob("*.py")}
    assert {f"pcpp_mpi/commands/{m}.py" for m in ("analysis", "plan", "info", "sweep")} <= names
    assert not any(n.startswith(("tools/", "tests/")) for n in names)
    assert "pcpp_mpi/analysis/synthetic.py" not in names


@pytest.mark.parametrize("argv", SUBCOMMANDS, ids=" ".join)
def test_every_subcommand_runs_from_the_installed_files(
    argv: list[str], unpacked_wheel: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "PYTHONPATH": str(unpacked_wheel)}
    where = "import pcpp_mpi; print(pcpp_mpi.__file__)"
    found = subprocess.run(
        [sys.executable, "-c", where], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert Path(found.stdout.strip()).is_relative_to(unpacked_wheel), found.stdout
    done = subprocess.run(
        [sys.executable, "-c", ENTRY, *argv, "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: ")
