"""Run directories and the files a run writes: the HDF5 run file, PNG copies, provenance."""

from pcpp_mpi.output.errors import OutputError, SchemaError
from pcpp_mpi.output.images import write_png
from pcpp_mpi.output.run_dir import OUR_FILE_PATTERNS, prepare_run_dir
from pcpp_mpi.output.run_file import (
    SUPPORTED_SCHEMA_VERSIONS,
    RunFile,
    RunImage,
    RunInfo,
    check_schema_version,
    open_run_file,
    read_run,
)

__all__ = [
    "OUR_FILE_PATTERNS",
    "SUPPORTED_SCHEMA_VERSIONS",
    "OutputError",
    "RunFile",
    "RunImage",
    "RunInfo",
    "SchemaError",
    "check_schema_version",
    "open_run_file",
    "prepare_run_dir",
    "read_run",
    "write_png",
]
