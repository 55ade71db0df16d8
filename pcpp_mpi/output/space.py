"""Refusing to write when the disk is (nearly) full.

HDF5 does not recover from a failed write: files are left inconsistent and the process may
crash on clean-up. So a run checks the free space before every write it makes and stops with
a clear error while there is still room to record that it failed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pcpp_mpi.output.errors import OutputError

#: Free space a run keeps in hand on the file system of its run directory.
RESERVE_BYTES = 4 * 2**20


def check_free_space(directory: str | Path, need: int = 0, reserve: int = RESERVE_BYTES) -> None:
    """Raise OutputError if writing ``need`` more bytes would leave less than ``reserve``."""
    free = shutil.disk_usage(directory).free
    if free < need + reserve:
        raise OutputError(
            f"disk full: {free / 2**20:.2f} MiB free on the file system of {directory}, "
            f"{(need + reserve) / 2**20:.2f} MiB needed to write safely; free some space "
            "(finished steps and images are kept)"
        )
