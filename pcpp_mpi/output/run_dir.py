"""Preparing the run directory (called on one rank, before any model is loaded): create it,
lock it for this job (:mod:`pcpp_mpi.output.run_lock`), then clear it."""

from __future__ import annotations

import fnmatch
import os
import tempfile
from pathlib import Path

from pcpp_mpi.output.errors import OutputError
from pcpp_mpi.output.run_lock import BREAK_NAME, LOCK_NAME, RunLock

#: Names of the files pcpp-mpi writes into a run directory; ``--overwrite`` removes only these.
OUR_FILE_PATTERNS: tuple[str, ...] = ("run.h5", "rank-*.h5", "image-*.png")


def is_our_file(name: str) -> bool:
    """Whether a file name (no directory part) is one that pcpp-mpi writes."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in OUR_FILE_PATTERNS)


def _check_writable(path: Path) -> None:
    """Raise OutputError unless files can be created in the directory ``path``."""
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"output directory {path} is not writable")
    try:
        fd, probe = tempfile.mkstemp(prefix=".pcpp-mpi-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(
            f"output directory {path} is not writable: {exc.strerror or exc}"
        ) from exc


def create_run_dir(path: str | Path) -> Path:
    """Create the directory ``path`` (with parents) if needed and return its absolute path.

    Raises :class:`OutputError` naming the path when it is a file or cannot be written.
    """
    path = Path(path).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise OutputError(f"output path {path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output directory {path}: {exc.strerror or exc}") from exc
    _check_writable(path)
    return path


def clear_run_dir(path: Path, overwrite: bool) -> None:
    """Make the locked run directory ``path`` ready for a new run.

    An existing non-empty directory (the lock files aside) is refused unless ``overwrite``;
    with ``overwrite`` only the files pcpp-mpi writes (:data:`OUR_FILE_PATTERNS`) are removed
    and nothing else is deleted. The caller holds the directory's lock, so no running job's
    files are ever removed.
    """
    entries = sorted(set(os.listdir(path)) - {LOCK_NAME, BREAK_NAME})
    if not entries:
        return
    if not overwrite:
        raise OutputError(
            f"output directory {path} is not empty; pass --overwrite to replace the files "
            f"pcpp-mpi wrote there ({', '.join(OUR_FILE_PATTERNS)}; nothing else is deleted), "
            "or choose another --out"
        )
    for name in entries:
        if not is_our_file(name):
            continue
        entry = path / name
        if entry.is_dir() and not entry.is_symlink():
            raise OutputError(
                f"cannot overwrite {entry}: it is a directory, not a file pcpp-mpi wrote; "
                "move it away or choose another --out"
            )
        try:
            entry.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise OutputError(f"cannot remove {entry}: {exc.strerror or exc}") from exc


def prepare_run_dir(path: str | Path, overwrite: bool, *, break_lock: bool = False) -> RunLock:
    """Create the run directory ``path``, lock it for this job and clear it; returns the lock
    (``lock.run_dir`` is the absolute path; ``lock.release()`` when the run ends).

    Raises :class:`~pcpp_mpi.output.run_lock.RunDirLocked` naming the holder when another job
    holds the directory (``break_lock``: see :meth:`RunLock.acquire`), and
    :class:`OutputError` naming the path when the directory cannot be used (the lock is
    released again then).
    """
    run_dir = create_run_dir(path)
    lock = RunLock.acquire(run_dir, break_lock=break_lock)
    try:
        clear_run_dir(run_dir, overwrite)
    except BaseException:
        lock.release()
        raise
    return lock
