"""Provenance that does not need MPI: package versions and the source revision."""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

#: Import name -> distribution name of the packages recorded in every run file.
PACKAGES: tuple[tuple[str, str], ...] = (
    ("torch", "torch"),
    ("diffusers", "diffusers"),
    ("transformers", "transformers"),
    ("mpi4py", "mpi4py"),
    ("h5py", "h5py"),
    ("numpy", "numpy"),
    ("triton", "triton"),
    ("pcpp_mpi", "pcpp-mpi"),
)
NOT_INSTALLED = "not installed"
GIT_TIMEOUT_S = 5.0


def collect_package_versions() -> dict[str, str]:
    """Installed versions of the packages a run depends on ('not installed' when missing).

    pcpp_mpi run from a source tree that is not installed reports its ``__version__``.
    """
    versions: dict[str, str] = {}
    for name, distribution in PACKAGES:
        try:
            versions[name] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            versions[name] = NOT_INSTALLED
    if versions["pcpp_mpi"] == NOT_INSTALLED:
        from pcpp_mpi import __version__

        versions["pcpp_mpi"] = f"{__version__} (source tree)"
    return versions


def _git(directory: Path, *args: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", "-C", str(directory), *args],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout if result.returncode == 0 else None


def git_revision(directory: str | Path | None = None) -> str | None:
    """``HEAD`` of the git checkout holding pcpp_mpi, with '-dirty' for uncommitted changes.

    None when the package is not in a git checkout (e.g. installed from a wheel into a
    virtualenv that happens to lie inside another repository), or git is missing or slow.
    """
    if directory is None:
        import pcpp_mpi

        directory = Path(pcpp_mpi.__file__).resolve().parent
    directory = Path(directory)
    # The directory itself must be tracked, not merely lie inside some repository.
    if _git(directory, "ls-files", "--error-unmatch", ".") is None:
        return None
    head = _git(directory, "rev-parse", "HEAD")
    if head is None or not head.strip():
        return None
    status = _git(directory, "status", "--porcelain")
    if status is None:
        return None
    return head.strip() + ("-dirty" if status.strip() else "")
