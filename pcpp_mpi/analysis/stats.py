"""Figures computed from trace rows: quantiles, exchanges (waits) and overlap efficiency.

Definitions (all times in seconds, from the rank-file tables):

- an *exchange* is one layer's communication for one step: the rows of ``/exchanges`` that
  share ``(image, step, layer, t_post, t_wait_start, t_wait_end)`` (one row per peer; all of
  them completed by the same wait);
- its *in-flight time* is ``t_wait_end - t_post`` (posted until the rank saw it complete);
- its *exposed time* is ``t_wait_end - t_wait_start`` (the rank was blocked waiting);
- its *hidden time* is ``t_wait_start - t_post`` (compute ran while it was in flight);
- *overlap efficiency* of a set of exchanges is ``1 - sum(exposed) / sum(in-flight)``: the
  share of in-flight time hidden behind compute. 1 means no rank ever waited; 0 means every
  exchange was waited for as soon as it was posted (blocking calls, ``sync`` mode).
  Exchanges never completed (``t_wait_end < 0``, e.g. pending when a job was killed) are left
  out and counted separately.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

EXCHANGE_KEY = ("image", "step", "layer", "t_post", "t_wait_start", "t_wait_end")


def median(values: Iterable[float]) -> float | None:
    """The median (mean of the middle two for an even count); None for no values."""
    array = np.asarray(list(values), dtype=np.float64)
    return float(np.median(array)) if array.size else None


def percentile(values: Iterable[float], q: float) -> float | None:
    """The ``q``-th percentile with numpy's linear interpolation; None for no values."""
    array = np.asarray(list(values), dtype=np.float64)
    return float(np.percentile(array, q)) if array.size else None


def completed(exchanges: np.ndarray) -> np.ndarray:
    """The exchange rows whose wait finished (``t_wait_end >= 0``)."""
    return exchanges[exchanges["t_wait_end"] >= 0]


@dataclass(frozen=True)
class Exchanges:
    """Exchanges (one per layer and step, peers merged) of one rank.

    Arrays are aligned; ``pending`` counts rows that were posted but never completed.
    """

    image: np.ndarray
    step: np.ndarray
    waited_in_step: np.ndarray
    layer: np.ndarray
    kind: np.ndarray
    t_post: np.ndarray
    t_wait_start: np.ndarray
    t_wait_end: np.ndarray
    sent: np.ndarray
    received: np.ndarray
    messages: np.ndarray
    pending: int

    def __len__(self) -> int:
        return len(self.t_post)

    @property
    def in_flight(self) -> np.ndarray:
        return self.t_wait_end - self.t_post

    @property
    def exposed(self) -> np.ndarray:
        return self.t_wait_end - self.t_wait_start

    def select(self, mask: np.ndarray) -> Exchanges:
        return Exchanges(
            **{
                name: getattr(self, name)[mask]
                for name in (
                    "image",
                    "step",
                    "waited_in_step",
                    "layer",
                    "kind",
                    "t_post",
                    "t_wait_start",
                    "t_wait_end",
                    "sent",
                    "received",
                    "messages",
                )
            },
            pending=self.pending,
        )


def group_exchanges(rows: np.ndarray) -> Exchanges:
    """Merge a rank's ``/exchanges`` rows into exchanges (see the module docstring)."""
    done = completed(rows)
    pending = len(rows) - len(done)
    if len(done) == 0:
        empty_f = np.empty(0, dtype=np.float64)
        empty_i = np.empty(0, dtype=np.int64)
        empty_s = np.empty(0, dtype="U1")
        return Exchanges(
            empty_i,
            empty_i,
            empty_i,
            empty_s,
            empty_s,
            empty_f,
            empty_f,
            empty_f,
            empty_i,
            empty_i,
            empty_i,
            pending,
        )
    keys = [tuple(row[name] for name in EXCHANGE_KEY) for row in done]
    index: dict[tuple, int] = {}
    owner = np.empty(len(done), dtype=np.int64)
    for i, key in enumerate(keys):
        owner[i] = index.setdefault(key, len(index))
    first = np.full(len(index), -1, dtype=np.int64)
    for i in range(len(done) - 1, -1, -1):
        first[owner[i]] = i
    heads = done[first]
    n = len(index)
    return Exchanges(
        image=heads["image"].astype(np.int64),
        step=heads["step"].astype(np.int64),
        waited_in_step=heads["waited_in_step"].astype(np.int64),
        layer=heads["layer"],
        kind=heads["kind"],
        t_post=heads["t_post"].astype(np.float64),
        t_wait_start=heads["t_wait_start"].astype(np.float64),
        t_wait_end=heads["t_wait_end"].astype(np.float64),
        sent=np.bincount(owner, weights=done["sent"], minlength=n).astype(np.int64),
        received=np.bincount(owner, weights=done["received"], minlength=n).astype(np.int64),
        messages=np.bincount(owner, minlength=n).astype(np.int64),
        pending=pending,
    )


@dataclass(frozen=True)
class Overlap:
    """Totals behind an overlap efficiency (seconds)."""

    in_flight: float
    exposed: float
    exchanges: int

    @property
    def efficiency(self) -> float | None:
        """``1 - exposed / in_flight``; None when nothing was in flight."""
        if self.in_flight <= 0.0:
            return None
        return 1.0 - self.exposed / self.in_flight

    def __add__(self, other: Overlap) -> Overlap:
        return Overlap(
            self.in_flight + other.in_flight,
            self.exposed + other.exposed,
            self.exchanges + other.exchanges,
        )


def overlap(exchanges: Exchanges) -> Overlap:
    """In-flight and exposed totals of a set of exchanges."""
    return Overlap(
        in_flight=float(exchanges.in_flight.sum()),
        exposed=float(exchanges.exposed.sum()),
        exchanges=len(exchanges),
    )


def step_keys(steps: np.ndarray) -> list[tuple[int, int]]:
    """``(image, step)`` of every row of a ``/steps`` table, in table order."""
    return [(int(i), int(s)) for i, s in zip(steps["image"], steps["step"], strict=True)]
