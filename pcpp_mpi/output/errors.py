"""Errors raised while writing or reading run outputs."""


class OutputError(RuntimeError):
    """A run directory or output file cannot be prepared, written or read."""


class SchemaError(OutputError):
    """A file was written with a schema version this version of pcpp-mpi cannot read."""
