"""The one exception type of :mod:`pcpp_mpi.models`."""

from __future__ import annotations


class ModelError(RuntimeError):
    """A model cannot be configured or loaded; the message names what is missing or wrong."""
