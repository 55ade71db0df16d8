"""Rank-aware logging: rank 0 logs at INFO, other ranks only warnings, tagged with their rank."""

from __future__ import annotations

import logging
import sys


def setup_logging(rank: int, n_ranks: int, verbose: bool = False) -> None:
    """Configure the ``pcpp_mpi`` logger for this rank (idempotent)."""
    logger = logging.getLogger("pcpp_mpi")
    logger.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    prefix = "pcpp-mpi" if n_ranks == 1 else f"pcpp-mpi [rank {rank}]"
    handler.setFormatter(logging.Formatter(f"{prefix} %(levelname)s: %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    if verbose:
        logger.setLevel(logging.DEBUG)
    else:
        logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
