"""What MPI library is loaded, what it can do, and where the ranks run.

Nothing here imports ``mpi4py.MPI`` at module import (that would initialise MPI with
whatever thread level was configured so far); the functions that need MPI import it when
called, by which time the caller has initialised it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import socket
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mpi4py import MPI

#: Environment variable that overrides CUDA-awareness detection: ``0`` or ``1``.
CUDA_AWARE_ENV = "PCPP_MPI_CUDA_AWARE"

THREAD_LEVEL_NAMES: tuple[str, ...] = (
    "MPI_THREAD_SINGLE",
    "MPI_THREAD_FUNNELED",
    "MPI_THREAD_SERIALIZED",
    "MPI_THREAD_MULTIPLE",
)

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
# Core MPI libraries first; Fortran/C++ binding libraries (libmpi_mpifh, ...) also resolve
# the symbols through their dependencies, so they are acceptable fallbacks.
_LIBMPI_RE = re.compile(r"^lib(mpi|mpich|mpi_cray|impi|mpi_[A-Za-z0-9_]+)\.(so|dylib)")
_LIBMPI_NAMES = ("libmpi.so.40", "libmpi.so.12", "libmpi.so", "libmpich.so.12", "libmpich.so")
_MPIX_GPU_SUPPORT_CUDA = 0  # MPICH's type id for CUDA in MPIX_GPU_query_support


@dataclass(frozen=True)
class CudaAwareness:
    """Whether MPI takes CUDA device buffers (None: unknown), and how that was decided."""

    value: bool | None
    source: str


def _env_override() -> bool | None:
    raw = os.environ.get(CUDA_AWARE_ENV, "").strip().lower()
    if not raw:
        return None
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ValueError(
        f"environment variable {CUDA_AWARE_ENV} must be 0 or 1, got {os.environ[CUDA_AWARE_ENV]!r}"
    )


def _mapped_libmpi_paths() -> list[str]:
    """Paths of MPI libraries mapped into this process (Linux: /proc/self/maps)."""
    paths: list[str] = []
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                parts = line.split(maxsplit=5)
                if len(parts) == 6 and _LIBMPI_RE.match(os.path.basename(parts[5].strip())):
                    path = parts[5].strip()
                    if path not in paths:
                        paths.append(path)
    except OSError:
        return []
    # Core libraries (libmpi.so.N, libmpich.so.N) before binding libraries.
    return sorted(paths, key=lambda p: "_" in os.path.basename(p).split(".")[0])


def _loaded_libmpi() -> ctypes.CDLL | None:
    """A ctypes handle on the MPI library already loaded by mpi4py, or None.

    Only libraries that are already loaded are opened (RTLD_NOLOAD), so this never pulls a
    second, different MPI into the process.
    """
    try:
        main = ctypes.CDLL(None)
        if hasattr(main, "MPI_Get_version"):
            return main
    except OSError:
        pass
    noload = getattr(os, "RTLD_NOLOAD", None)
    if noload is None:
        return None
    mode = noload | getattr(os, "RTLD_LAZY", 0)
    candidates = _mapped_libmpi_paths() + list(_LIBMPI_NAMES)
    for name in ("mpi", "mpich"):
        found = ctypes.util.find_library(name)
        if found:
            candidates.append(found)
    for candidate in candidates:
        try:
            lib = ctypes.CDLL(candidate, mode=mode)
        except OSError:
            continue
        if hasattr(lib, "MPI_Get_version"):
            return lib
    return None


def _mpi_initialised() -> bool:
    mpi = sys.modules.get("mpi4py.MPI")
    return mpi is not None and bool(mpi.Is_initialized()) and not bool(mpi.Is_finalized())


def _query_library() -> CudaAwareness:
    if not _mpi_initialised():
        return CudaAwareness(None, "unknown (MPI not initialised)")
    lib = _loaded_libmpi()
    if lib is None:
        return CudaAwareness(None, "unknown (MPI library not found)")
    is_open_mpi = hasattr(lib, "ompi_mpi_comm_self")
    if not is_open_mpi:
        query_gpu = getattr(lib, "MPIX_GPU_query_support", None)
        if query_gpu is not None:  # MPICH >= 4.0.1 (honours MPIR_CVAR_ENABLE_GPU)
            query_gpu.restype = ctypes.c_int
            query_gpu.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
            supported = ctypes.c_int(0)
            if query_gpu(_MPIX_GPU_SUPPORT_CUDA, ctypes.byref(supported)) == 0:
                return CudaAwareness(bool(supported.value), "MPIX_GPU_query_support")
    # Open MPI (built with or without CUDA: the extension is there by default), MVAPICH2,
    # MPICH >= 4.1: 1 when built with CUDA and the runtime supports CUDA buffers.
    query_cuda = getattr(lib, "MPIX_Query_cuda_support", None)
    if query_cuda is not None:
        query_cuda.restype = ctypes.c_int
        query_cuda.argtypes = []
        return CudaAwareness(query_cuda() == 1, "MPIX_Query_cuda_support")
    return CudaAwareness(None, "unknown (no CUDA query in the MPI library)")


def detect_cuda_aware(override: bool | None = None) -> CudaAwareness:
    """Like :func:`cuda_aware`, also saying where the answer came from."""
    if override is not None:
        return CudaAwareness(bool(override), "argument")
    env = _env_override()
    if env is not None:
        return CudaAwareness(env, CUDA_AWARE_ENV)
    return _query_library()


def cuda_aware(override: bool | None = None) -> bool | None:
    """Whether the loaded MPI library accepts CUDA device buffers.

    Precedence: ``override``, then ``PCPP_MPI_CUDA_AWARE=0|1``, then the library itself
    (Open MPI / MVAPICH2: ``MPIX_Query_cuda_support()``; MPICH: ``MPIX_GPU_query_support``),
    queried through ctypes on the libmpi mpi4py loaded; MPI must be initialised for that.
    Returns None when it cannot be determined; the engine then treats MPI as not
    CUDA-aware and stages device buffers through pinned host memory.
    Raises ValueError for an environment value other than 0/1 (or true/false, yes/no).
    """
    return detect_cuda_aware(override).value


def thread_level_name(level: int) -> str:
    """Name of an MPI thread support level, e.g. 'MPI_THREAD_MULTIPLE'."""
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None:
        for name in THREAD_LEVEL_NAMES:
            if getattr(mpi, name.removeprefix("MPI_"), None) == level:
                return name
    elif 0 <= level < len(THREAD_LEVEL_NAMES):
        return THREAD_LEVEL_NAMES[level]
    return f"MPI_THREAD_UNKNOWN({level})"


@dataclass(frozen=True)
class RankInfo:
    """Where one rank runs."""

    rank: int
    host: str
    pid: int
    devices: tuple[str, ...]


@dataclass(frozen=True)
class WorldInfo:
    """The MPI library and the ranks of a communicator."""

    library_version: str
    mpi_version: str
    thread_level: int
    world_size: int
    cuda_aware: bool | None
    cuda_aware_source: str
    ranks: tuple[RankInfo, ...]

    @property
    def thread_level_name(self) -> str:
        """The provided thread level's name."""
        return thread_level_name(self.thread_level)

    @property
    def hosts(self) -> tuple[str, ...]:
        """Distinct host names, in rank order of first appearance."""
        return tuple(dict.fromkeys(r.host for r in self.ranks))

    def to_provenance(self) -> dict[str, Any]:
        """Plain (JSON-able) values for the run file's provenance."""
        return {
            "mpi_library": self.library_version,
            "mpi_standard": self.mpi_version,
            "mpi_thread_level": self.thread_level_name,
            "mpi_cuda_aware": self.cuda_aware,
            "mpi_cuda_aware_source": self.cuda_aware_source,
            "n_ranks": self.world_size,
            "hosts": list(self.hosts),
            "ranks": [
                {"rank": r.rank, "host": r.host, "pid": r.pid, "devices": list(r.devices)}
                for r in self.ranks
            ],
        }


def _device_names() -> tuple[str, ...]:
    """Names of the visible CUDA devices, or ('cpu',)."""
    try:
        import torch
    except ImportError:
        return ("cpu",)
    try:
        if torch.cuda.is_available():
            names = tuple(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
            if names:
                return names
    except (RuntimeError, AssertionError, OSError):
        pass
    return ("cpu",)


def library_version() -> str:
    """First line of ``MPI_Get_library_version`` (MPI must be initialised)."""
    from mpi4py import MPI

    # Open MPI includes the terminating NUL in the string it returns.
    text = MPI.Get_library_version().split("\x00", 1)[0]
    lines = [line.strip() for line in text.strip().splitlines()]
    return lines[0].rstrip(",").strip() if lines and lines[0] else "unknown"


def describe_world(comm: MPI.Comm) -> WorldInfo:
    """Describe the MPI library and every rank of ``comm`` (collective: all ranks call it)."""
    from mpi4py import MPI

    major, minor = MPI.Get_version()
    awareness = detect_cuda_aware()
    local = RankInfo(
        rank=comm.Get_rank(), host=socket.gethostname(), pid=os.getpid(), devices=_device_names()
    )
    ranks = tuple(comm.allgather(local))
    return WorldInfo(
        library_version=library_version(),
        mpi_version=f"{major}.{minor}",
        thread_level=MPI.Query_thread(),
        world_size=comm.Get_size(),
        cuda_aware=awareness.value,
        cuda_aware_source=awareness.source,
        ranks=ranks,
    )


def _yes_no(value: bool | None) -> str:
    if value is None:
        return "unknown (treated as not CUDA-aware: host staging)"
    return "yes" if value else "no"


def format_info(info: WorldInfo) -> str:
    """A readable multi-line report, one line per rank."""
    n_hosts = len(info.hosts)
    lines = [
        f"MPI library:   {info.library_version}",
        f"MPI standard:  {info.mpi_version}",
        f"Thread level:  {info.thread_level_name}",
        f"CUDA-aware:    {_yes_no(info.cuda_aware)} [{info.cuda_aware_source}]"
        + (
            " (no rank sees a GPU: unused)"
            if info.cuda_aware and all(r.devices == ("cpu",) for r in info.ranks)
            else ""
        ),
        f"World size:    {info.world_size} rank{'s' if info.world_size != 1 else ''} "
        f"on {n_hosts} host{'s' if n_hosts != 1 else ''}",
    ]
    width = len(str(max(info.world_size - 1, 0)))
    for r in info.ranks:
        lines.append(
            f"  rank {r.rank:>{width}}  host {r.host}  pid {r.pid}  devices: {', '.join(r.devices)}"
        )
    return "\n".join(lines)
