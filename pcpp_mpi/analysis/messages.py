"""Pairing each message's send with its receive, across rank files.

An ``/exchanges`` row with ``sent > 0`` on rank A towards peer B is one message A -> B; its
receive is the row on B whose peer is A, with the same image, step and layer, and
``received > 0``. Peers are translated to world ranks with :meth:`RunTrace.world_rank`.
Collectives (``peer = -1``) have no single receiver and are not paired.
"""

from __future__ import annotations

from dataclasses import dataclass

from pcpp_mpi.analysis.files import RunTrace


@dataclass(frozen=True)
class Message:
    """One point-to-point message. Times in seconds, each on its own rank's clock."""

    image: int
    step: int
    layer: str
    kind: str
    src: int
    dst: int
    nbytes: int
    send_post: float
    send_wait_start: float
    send_done: float
    recv_post: float | None
    recv_wait_start: float | None
    recv_done: float | None

    @property
    def matched(self) -> bool:
        return self.recv_done is not None


@dataclass(frozen=True)
class Matching:
    """Every send of a run, paired with its receive where the receiver recorded it."""

    messages: list[Message]
    unmatched_receives: int

    @property
    def matched(self) -> list[Message]:
        return [m for m in self.messages if m.matched]

    @property
    def unmatched_sends(self) -> int:
        return sum(1 for m in self.messages if not m.matched)


def match_messages(run: RunTrace) -> Matching:
    """Pair sends with receives (see the module docstring); unfinished rows are skipped."""
    receives: dict[tuple[int, int, str, int, int], tuple[float, float, float]] = {}
    for trace in run.ranks:
        rows = trace.exchanges
        rows = rows[(rows["received"] > 0) & (rows["peer"] >= 0) & (rows["t_wait_end"] >= 0)]
        for row in rows:
            src = run.world_rank(trace, int(row["peer"]), str(row["kind"]))
            key = (int(row["image"]), int(row["step"]), str(row["layer"]), src, trace.rank)
            receives[key] = (
                float(row["t_post"]),
                float(row["t_wait_start"]),
                float(row["t_wait_end"]),
            )
    messages = []
    used = set()
    for trace in run.ranks:
        rows = trace.exchanges
        rows = rows[(rows["sent"] > 0) & (rows["peer"] >= 0) & (rows["t_wait_end"] >= 0)]
        for row in rows:
            kind = str(row["kind"])
            dst = run.world_rank(trace, int(row["peer"]), kind)
            assert dst is not None
            key = (int(row["image"]), int(row["step"]), str(row["layer"]), trace.rank, dst)
            receive = receives.get(key)
            if receive is not None:
                used.add(key)
            messages.append(
                Message(
                    image=key[0],
                    step=key[1],
                    layer=key[2],
                    kind=kind,
                    src=trace.rank,
                    dst=dst,
                    nbytes=int(row["sent"]),
                    send_post=float(row["t_post"]),
                    send_wait_start=float(row["t_wait_start"]),
                    send_done=float(row["t_wait_end"]),
                    recv_post=None if receive is None else receive[0],
                    recv_wait_start=None if receive is None else receive[1],
                    recv_done=None if receive is None else receive[2],
                )
            )
    return Matching(messages=messages, unmatched_receives=len(receives) - len(used))
