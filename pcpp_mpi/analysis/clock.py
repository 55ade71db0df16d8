"""Putting every rank's times on one axis.

Each rank records seconds since its own epoch, taken right after a barrier that all ranks
leave together, so by default (``barrier``) the recorded times are used as they are: the
ranks' zeros coincide up to the barrier's exit skew (microseconds on a fast network; up to
milliseconds on an oversubscribed node). ``unix`` shifts each rank by the difference of its
``epoch_unix`` attribute from the earliest one instead: exact on one host (one clock), but
across hosts only as good as their clock synchronisation (NTP: often a millisecond or worse).
"""

from __future__ import annotations

from typing import Literal

from pcpp_mpi.analysis.files import RunTrace

Clock = Literal["barrier", "unix"]
CLOCKS: tuple[str, ...] = ("barrier", "unix")


def rank_offsets(run: RunTrace, clock: Clock = "barrier") -> dict[int, float]:
    """Seconds to add to each rank's recorded times (keyed by world rank)."""
    if clock == "barrier":
        return {trace.rank: 0.0 for trace in run.ranks}
    if clock != "unix":
        raise ValueError(f"clock must be one of {CLOCKS}, got {clock!r}")
    epochs = {trace.rank: trace.epoch_unix for trace in run.ranks}
    missing = [rank for rank, epoch in epochs.items() if epoch is None]
    if missing:
        raise ValueError(f"rank(s) {missing} have no epoch_unix attribute: use clock 'barrier'")
    earliest = min(e for e in epochs.values() if e is not None)
    return {rank: float(epoch) - earliest for rank, epoch in epochs.items() if epoch is not None}
