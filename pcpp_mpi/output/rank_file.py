"""A rank's own file ``DIR/rank-NNNN.h5``: its band, its trace and the bytes it exchanged.

Layout (schema version :data:`pcpp_mpi.SCHEMA_VERSION`; full reference in docs/FORMATS.md)::

    /            attrs: schema_version, rank, n_ranks, band_index, cfg_index, band_start,
                        band_stop (level-0 latent rows), mode, host, device, tracing,
                        epoch_unix (UNIX time of t = 0), status and peak_memory_bytes at the end
    /steps       image, step, kind, t_start, t_end, wall, compute, exposed_comm   (seconds)
    /exchanges   image, step, layer, kind, peer, sent, received, t_post, t_wait_start,
                 t_wait_end, waited_in_step
    /phases      name, image, t_start, t_end
    /traffic     image, step, kind, sent, received   (bytes handed to MPI, per step and kind)
    /gpu_steps   image, step, t_start, t_end, wall   (seconds; GPU-side step times, CUDA
                 events; empty on the CPU)

Each rank writes only its own file and flushes after every step, so a killed job keeps every
finished step readable. Files are opened without HDF5 file locking, so a running job's files
can be read (e.g. to watch progress) while it writes them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pcpp_mpi import SCHEMA_VERSION
from pcpp_mpi.output.errors import OutputError
from pcpp_mpi.output.run_file import check_schema_version
from pcpp_mpi.output.space import check_free_space
from pcpp_mpi.trace.recorder import ExchangeRow, GpuStepRow, PhaseRow, StepRow

_STR = h5py.string_dtype()

TABLES: dict[str, np.dtype] = {
    "steps": np.dtype(
        [
            ("image", np.int32),
            ("step", np.int32),
            ("kind", _STR),
            ("t_start", np.float64),
            ("t_end", np.float64),
            ("wall", np.float64),
            ("compute", np.float64),
            ("exposed_comm", np.float64),
        ]
    ),
    "exchanges": np.dtype(
        [
            ("image", np.int32),
            ("step", np.int32),
            ("layer", _STR),
            ("kind", _STR),
            ("peer", np.int32),
            ("sent", np.int64),
            ("received", np.int64),
            ("t_post", np.float64),
            ("t_wait_start", np.float64),
            ("t_wait_end", np.float64),
            ("waited_in_step", np.int32),
        ]
    ),
    "phases": np.dtype(
        [("name", _STR), ("image", np.int32), ("t_start", np.float64), ("t_end", np.float64)]
    ),
    "traffic": np.dtype(
        [
            ("image", np.int32),
            ("step", np.int32),
            ("kind", _STR),
            ("sent", np.int64),
            ("received", np.int64),
        ]
    ),
    "gpu_steps": np.dtype(
        [
            ("image", np.int32),
            ("step", np.int32),
            ("t_start", np.float64),
            ("t_end", np.float64),
            ("wall", np.float64),
        ]
    ),
}
#: Tables a file of schema version 1 written before they existed may lack (read as empty).
OPTIONAL_TABLES: frozenset[str] = frozenset({"gpu_steps"})


def rank_file_name(rank: int) -> str:
    return f"rank-{rank:04d}.h5"


def _step_tuple(row: StepRow) -> tuple:
    return (
        row.image,
        row.step,
        row.kind,
        row.t_start,
        row.t_end,
        row.wall,
        row.compute,
        row.exposed_comm,
    )


def _exchange_tuple(row: ExchangeRow) -> tuple:
    return (
        row.image,
        row.step,
        row.layer,
        row.kind,
        row.peer,
        row.sent,
        row.received,
        row.t_post,
        row.t_wait_start,
        row.t_wait_end,
        row.waited_in_step,
    )


def _phase_tuple(row: PhaseRow) -> tuple:
    return (row.name, row.image, row.t_start, row.t_end)


def _gpu_step_tuple(row: GpuStepRow) -> tuple:
    return (row.image, row.step, row.t_start, row.t_end, row.wall)


class RankFile:
    """Writer of one rank's file; every ``append`` flushes."""

    def __init__(self, path: Path, attrs: Mapping[str, Any]) -> None:
        self.path = path
        try:
            self._file = h5py.File(path, "w-", locking=False)
        except (OSError, FileExistsError) as exc:
            raise OutputError(f"cannot create rank file {path}: {exc}") from exc
        self._file.attrs["schema_version"] = SCHEMA_VERSION
        self._file.attrs["status"] = "running"
        for key, value in attrs.items():
            self._file.attrs[key] = value
        for name, dtype in TABLES.items():
            self._file.create_dataset(
                name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(512,)
            )
        self._file.flush()

    def _append(self, name: str, rows: Sequence[tuple]) -> None:
        if not rows:
            return
        table = self._file[name]
        start = table.shape[0]
        table.resize((start + len(rows),))
        table[start:] = np.array(list(rows), dtype=TABLES[name])

    def append(
        self,
        *,
        steps: Sequence[StepRow] = (),
        exchanges: Sequence[ExchangeRow] = (),
        phases: Sequence[PhaseRow] = (),
        traffic: Sequence[tuple[int, int, str, int, int]] = (),
        gpu_steps: Sequence[GpuStepRow] = (),
    ) -> None:
        """Append rows to the tables and flush (refused when the disk is nearly full)."""
        check_free_space(self.path.parent)
        try:
            self._append("steps", [_step_tuple(r) for r in steps])
            self._append("exchanges", [_exchange_tuple(r) for r in exchanges])
            self._append("phases", [_phase_tuple(r) for r in phases])
            self._append("traffic", list(traffic))
            self._append("gpu_steps", [_gpu_step_tuple(r) for r in gpu_steps])
            self._file.flush()
        except (OSError, RuntimeError) as exc:
            raise OutputError(
                f"cannot write rank file {self.path}: {exc} (is the disk full?)"
            ) from exc

    def set_attrs(self, **attrs: Any) -> None:
        for key, value in attrs.items():
            self._file.attrs[key] = value
        self._file.flush()

    def close(self) -> None:
        if self._file.id.valid:
            self._file.close()


def _decoded(table: np.ndarray) -> np.ndarray:
    """A copy of ``table`` with HDF5 variable-length strings as fixed ``str``."""
    fields = []
    for name in table.dtype.names or ():
        if table.dtype[name].kind == "O":
            values = [v.decode() if isinstance(v, bytes) else str(v) for v in table[name]]
            width = max((len(v) for v in values), default=1)
            fields.append((name, f"U{max(width, 1)}"))
        else:
            fields.append((name, table.dtype[name]))
    out = np.empty(len(table), dtype=fields)
    for name in table.dtype.names or ():
        if table.dtype[name].kind == "O":
            out[name] = [v.decode() if isinstance(v, bytes) else str(v) for v in table[name]]
        else:
            out[name] = table[name]
    return out


def read_table(path: str | Path, name: str) -> np.ndarray:
    """One table of a rank file (``steps``, ``exchanges``, ``phases``, ``traffic``,
    ``gpu_steps``; an optional table a file lacks reads as empty)."""
    if name not in TABLES:
        raise ValueError(f"unknown rank-file table {name!r} (known: {', '.join(TABLES)})")
    with h5py.File(path, "r", locking=False) as file:
        check_schema_version(file, path)
        if name in OPTIONAL_TABLES and name not in file:
            return _decoded(np.empty(0, dtype=TABLES[name]))
        return _decoded(file[name][()])


def read_traffic(path: str | Path) -> np.ndarray:
    """The ``/traffic`` table of a rank file (kind decoded to ``str``)."""
    return read_table(path, "traffic")


def read_rank_attrs(path: str | Path) -> dict[str, Any]:
    """The root attributes of a rank file."""
    with h5py.File(path, "r", locking=False) as file:
        check_schema_version(file, path)
        return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in file.attrs.items()}
