"""Rank-aware logging: rank 0 logs at INFO, other ranks only warnings, tagged with their rank.

Messages every rank must print (e.g. "compiling..." while a rank is busy for minutes, so a
Slurm log does not look hung) go to the :data:`EVERY_RANK` logger, at INFO on every rank.
"""

from __future__ import annotations

import logging
import sys

EVERY_RANK = "pcpp_mpi.every_rank"


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
    logging.getLogger(EVERY_RANK).setLevel(logging.DEBUG if verbose else logging.INFO)
