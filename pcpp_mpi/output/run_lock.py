"""One job at a time in a run directory: the lock file ``DIR/.pcpp-mpi.lock``.

The lock is a small JSON file, written whole under a name of the job's own and then
hard-linked to ``DIR/.pcpp-mpi.lock`` (atomic and exclusive on local file systems and on the
NFS/Lustre/GPFS file systems clusters share; ``O_CREAT | O_EXCL`` where there are no hard
links), holding who owns the directory:
host, pid, the start time of that process, the Slurm job id if any and when the run started.
Rank 0 takes it before the directory is cleared (``--overwrite``) or any model is loaded, and
removes it when the run ends, whatever the outcome. A job killed before it could remove it
leaves a *stale* lock:

- on the same host the holder is checked: a pid that no longer runs (or now belongs to another
  process, told apart by its start time) is stale and the new job takes the lock over;
- on another host the pid cannot be checked; the message names the holder, and
  ``--break-lock`` takes the lock over once the user has made sure that job is gone (a holder on
  this host that still runs is never taken over, ``--break-lock`` or not). An unreadable lock
  file (a job killed while writing it) is treated like a holder on another host.

Taking over is itself exclusive: the job that creates ``DIR/.pcpp-mpi.lock.break`` (again with
``O_EXCL``) re-reads the lock, checks it is still the stale one, replaces it and removes the
break file; a job that finds a break file is refused (two jobs never both take over).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from pcpp_mpi.output.errors import OutputError

LOCK_NAME = ".pcpp-mpi.lock"
BREAK_NAME = ".pcpp-mpi.lock.break"


class RunDirLocked(OutputError):
    """Another job holds the run directory; the message names it."""


@dataclass(frozen=True)
class LockHolder:
    """Who holds a run directory (the lock file's content)."""

    host: str
    pid: int
    pid_start: str  # /proc/PID/stat start time (clock ticks since boot); "" where unknown
    slurm_job_id: str  # "" outside Slurm
    started: str  # ISO 8601 UTC

    def describe(self) -> str:
        job = f", Slurm job {self.slurm_job_id}" if self.slurm_job_id else ""
        return f"host {self.host}, pid {self.pid}{job}, started {self.started}"

    @classmethod
    def current(cls) -> LockHolder:
        pid = os.getpid()
        return cls(
            host=socket.gethostname(),
            pid=pid,
            pid_start=_process_start(pid),
            slurm_job_id=os.environ.get("SLURM_JOB_ID", ""),
            started=datetime.now(UTC).isoformat(timespec="seconds"),
        )


def _process_start(pid: int) -> str:
    """The start time of process ``pid`` (field 22 of ``/proc/PID/stat``), "" if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rpartition(")")[2].split()[19]


def _alive_here(holder: LockHolder) -> bool:
    """Whether ``holder`` (on this host) still runs: its pid exists and, where known, it is the
    same process (same start time), not a later one that reused the pid."""
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process with that pid: alive
    now = _process_start(holder.pid)
    return not (holder.pid_start and now and now != holder.pid_start)


def _read(path: Path) -> LockHolder | None:
    """The holder in lock file ``path``; None when it vanished; a placeholder when unreadable
    (a job killed between creating and writing it)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
        return LockHolder(**{k: data[k] for k in LockHolder.__dataclass_fields__})
    except (ValueError, KeyError, TypeError):
        mtime = datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat(timespec="seconds")
        return LockHolder("unknown (unreadable lock file)", -1, "", "", mtime)


def _create(path: Path, holder: LockHolder) -> bool:
    """Create lock file ``path`` holding ``holder``; False if it exists already.

    The content is written to a file of this process first and then hard-linked to ``path``
    (atomic, and exclusive on NFS too): another job never sees the lock file empty or half
    written, which it would take for an unreadable lock. Where the file system has no hard
    links, the file is created with ``O_EXCL`` and written in place."""
    own = path.with_name(f"{path.name}.{holder.host}.{holder.pid}")
    try:
        with open(own, "w") as file:
            json.dump(asdict(holder), file)
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(own, path)
        except FileExistsError:
            return False
        except OSError:  # no hard links here
            return _create_in_place(path, holder)
        return True
    finally:
        with contextlib.suppress(OSError):
            own.unlink()


def _create_in_place(path: Path, holder: LockHolder) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as file:
        json.dump(asdict(holder), file)
        file.flush()
        os.fsync(file.fileno())
    return True


@dataclass
class RunLock:
    """The lock this job holds on ``run_dir``; :meth:`release` gives it back."""

    run_dir: Path
    holder: LockHolder

    @property
    def path(self) -> Path:
        return self.run_dir / LOCK_NAME

    @classmethod
    def acquire(cls, run_dir: Path, *, break_lock: bool = False) -> RunLock:
        """Lock ``run_dir`` (an existing directory) for this process or raise
        :class:`RunDirLocked` naming the holder. A stale lock is taken over (see the module
        docstring); ``break_lock`` also takes over a holder on another host."""
        me = LockHolder.current()
        path = run_dir / LOCK_NAME
        for _ in range(3):  # a holder may release between our attempts
            if _create(path, me):
                return cls(run_dir, me)
            holder = _read(path)
            if holder is not None:
                _refuse_unless_stale(path, holder, me, break_lock)
                if _take_over(run_dir, holder, me):
                    return cls(run_dir, me)
        raise RunDirLocked(f"cannot lock {run_dir}: its lock file {path} keeps changing")

    def release(self) -> None:
        """Remove the lock file if it is still ours (never another job's)."""
        with contextlib.suppress(OSError):
            if _read(self.path) == self.holder:
                self.path.unlink()


def _refuse_unless_stale(path: Path, holder: LockHolder, me: LockHolder, force: bool) -> None:
    if holder.host == me.host:
        if holder.pid > 0 and _alive_here(holder):
            raise RunDirLocked(
                f"output directory {path.parent} is in use by another pcpp-mpi job "
                f"({holder.describe()}); wait for it to end or choose another --out"
            )
        return  # stale: its process is gone
    if not force:
        hint = f" (check with: squeue -j {holder.slurm_job_id})" if holder.slurm_job_id else ""
        raise RunDirLocked(
            f"output directory {path.parent} is locked by a pcpp-mpi job on another host "
            f"({holder.describe()}){hint}; if that job is no longer running, rerun with "
            f"--break-lock (or remove {path}), otherwise choose another --out"
        )


def _take_over(run_dir: Path, stale: LockHolder, me: LockHolder) -> bool:
    """Replace the stale lock by ours, exclusively; False when it changed meanwhile."""
    breaker = run_dir / BREAK_NAME
    if not _create(breaker, me):
        raise RunDirLocked(
            f"output directory {run_dir}: another job is taking over its stale lock "
            f"({breaker} exists); if no job is starting there, remove {breaker}"
        )
    try:
        if _read(run_dir / LOCK_NAME) != stale:
            return False
        with contextlib.suppress(FileNotFoundError):
            (run_dir / LOCK_NAME).unlink()
        return _create(run_dir / LOCK_NAME, me)
    finally:
        with contextlib.suppress(OSError):
            breaker.unlink()
