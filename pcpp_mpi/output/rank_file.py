"""A rank's own file ``DIR/rank-NNNN.h5``: its band and the bytes it exchanged per step.

Layout (schema version :data:`pcpp_mpi.SCHEMA_VERSION`)::

    /            attrs: schema_version, rank, n_ranks, band_index, cfg_index,
                        band_start, band_stop (level-0 latent rows)
    /traffic     compound table, one row per (image, step, kind):
                 image int32, step int32, kind str, sent int64, received int64

Each rank writes only its own file and flushes after every image, so a killed job keeps
every finished image's rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from pcpp_mpi import SCHEMA_VERSION
from pcpp_mpi.output.run_file import check_schema_version

TRAFFIC_DTYPE = np.dtype(
    [
        ("image", np.int32),
        ("step", np.int32),
        ("kind", h5py.string_dtype()),
        ("sent", np.int64),
        ("received", np.int64),
    ]
)


def rank_file_name(rank: int) -> str:
    return f"rank-{rank:04d}.h5"


class RankFile:
    """Writer of one rank's file."""

    def __init__(self, path: Path, attrs: dict[str, int]) -> None:
        self.path = path
        self._file = h5py.File(path, "w")
        self._file.attrs["schema_version"] = SCHEMA_VERSION
        for key, value in attrs.items():
            self._file.attrs[key] = value
        self._traffic = self._file.create_dataset(
            "traffic", shape=(0,), maxshape=(None,), dtype=TRAFFIC_DTYPE, chunks=(256,)
        )
        self._file.flush()

    def append_traffic(self, rows: Sequence[tuple[int, int, str, int, int]]) -> None:
        """Append ``(image, step, kind, sent, received)`` rows and flush."""
        if not rows:
            return
        start = self._traffic.shape[0]
        self._traffic.resize((start + len(rows),))
        self._traffic[start:] = np.array(list(rows), dtype=TRAFFIC_DTYPE)
        self._file.flush()

    def close(self) -> None:
        if self._file.id.valid:
            self._file.close()


def read_traffic(path: str | Path) -> np.ndarray:
    """The ``/traffic`` table of a rank file (kind decoded to ``str``)."""
    with h5py.File(path, "r") as file:
        check_schema_version(file, path)
        table = file["traffic"][()]
    kinds = [k.decode() if isinstance(k, bytes) else k for k in table["kind"]]
    out = np.empty(
        len(table),
        dtype=[
            ("image", np.int32),
            ("step", np.int32),
            ("kind", "U16"),
            ("sent", np.int64),
            ("received", np.int64),
        ],
    )
    for name in ("image", "step", "sent", "received"):
        out[name] = table[name]
    out["kind"] = kinds
    return out
