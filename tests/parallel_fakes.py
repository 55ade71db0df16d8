"""In-memory fakes of the band exchanges, for the band-parallel layer tests on one process.

Each band runs in its own thread (as it would on its own rank); the fakes implement the same
post/wait protocol as :mod:`pcpp_mpi.comm.exchanges`: what band ``i`` posts for step ``t`` is
what its neighbours (or every band) receive when they wait for step ``t``; a wait blocks until
the partners have posted. :class:`FakeComm` implements
:class:`~pcpp_mpi.parallel.band_comm.BandComm`, what a family's ``parallelize`` asks of a
RankComm.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from diffusers.models.attention_processor import Attention

from pcpp_mpi.comm.exchanges import WireSpec
from pcpp_mpi.comm.frames import TokenFrames
from pcpp_mpi.parallel.band_attention import BandSelfAttnProcessor
from pcpp_mpi.plan.topology import Topology

TIMEOUT_S = 20.0
CPU = torch.device("cpu")
Tensor = torch.Tensor


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` intra-op threads. The bands already run in parallel threads; intra-op
    threads on top only oversubscribe the CPU (and make a small busy machine very slow)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# -- in-memory fakes -----------------------------------------------------------------------------


class Mailbox:
    """Messages keyed by ``(step, sender, what)``; ``get`` waits until the key was posted."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._messages: dict[tuple[int, int, str], Any] = {}

    def put(self, step: int, sender: int, what: str, value: Any) -> None:
        with self._cond:
            key = (step, sender, what)
            assert key not in self._messages, f"{key} posted twice"
            self._messages[key] = value
            self._cond.notify_all()

    def get(self, step: int, sender: int, what: str) -> Any:
        key = (step, sender, what)
        with self._cond:
            if not self._cond.wait_for(lambda: key in self._messages, timeout=TIMEOUT_S):
                raise AssertionError(f"nobody posted {key}")
            return self._messages[key]

    def posted(self, step: int, sender: int, what: str) -> bool:
        with self._cond:
            return (step, sender, what) in self._messages


def _clone(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach().clone()


Shape = tuple[int, ...]


class FakeRows:
    """Band ``index``'s end of a neighbour exchange (halos, pcpp K/V rows). With ``frames``
    (K/V rows; ``send_shapes`` and ``recv_shapes`` to and from the band above, the band below)
    the buffers are placed in them around the band as in
    :class:`pcpp_mpi.comm.exchanges.NeighbourExchange`: what is waited for at step ``t`` is
    written into frame ``t + 1``, sends come from frame ``t``, and a layer that filled its own
    part of a frame posts it with ``post_filled``."""

    def __init__(
        self,
        box: Mailbox,
        index: int,
        n_bands: int,
        send_shapes: tuple[Shape | None, Shape | None] | None = None,
        recv_shapes: tuple[Shape | None, Shape | None] | None = None,
        frames: TokenFrames | None = None,
    ) -> None:
        self.box, self.index, self.n = box, index, n_bands
        self.frames = frames
        self.filled_steps: list[int] = []
        self.posted_steps: list[int] = []
        self.waited_steps: list[int] = []
        if frames is not None:
            assert send_shapes is not None and recv_shapes is not None
            self.send_tokens = [0 if s is None else s[1] for s in send_shapes]
            self.recv_tokens = [0 if s is None else s[1] for s in recv_shapes]

    def frame(self, step: int) -> tuple[Tensor, Tensor] | None:
        if self.frames is None:
            return None
        start, stop = self.frames.band(self.index)
        first, last = start - self.recv_tokens[0], stop + self.recv_tokens[1]
        parity = step % 2
        return self.frames.tokens(parity, first, last), self.frames.tokens(parity, start, stop)

    def post_filled(self, step: int) -> None:
        self.filled_steps.append(step)
        assert self.frames is not None
        own = self.frames.tokens(step % 2, *self.frames.band(self.index))
        up, down = self.send_tokens
        self.post(
            step, own[:, :up] if up else None, own[:, own.shape[1] - down :] if down else None
        )

    def post(self, step: int, to_up: Tensor | None, to_down: Tensor | None) -> None:
        self.posted_steps.append(step)
        self.box.put(step, self.index, "up", _clone(to_up))
        self.box.put(step, self.index, "down", _clone(to_down))

    def wait(self, step: int) -> tuple[Tensor | None, Tensor | None]:
        self.waited_steps.append(step)
        i = self.index
        from_up = self.box.get(step, i - 1, "down") if i > 0 else None
        from_down = self.box.get(step, i + 1, "up") if i + 1 < self.n else None
        if self.frames is not None:  # as MPI would have received them
            start, stop = self.frames.band(i)
            parity = (step + 1) % 2
            if from_up is not None:
                self.frames.tokens(parity, start - from_up.shape[1], start).copy_(from_up)
            if from_down is not None:
                self.frames.tokens(parity, stop, stop + from_down.shape[1]).copy_(from_down)
        return from_up, from_down


class FakeBlocks:
    """Band ``index``'s end of an all-bands exchange (full K/V); with ``frames``, the blocks
    live in them as in :class:`pcpp_mpi.comm.exchanges.AllBandsExchange`."""

    def __init__(
        self, box: Mailbox, index: int, n_bands: int, frames: TokenFrames | None = None
    ) -> None:
        self.box, self.index, self.n = box, index, n_bands
        self.frames = frames
        self.filled_steps: list[int] = []
        self.posted_steps: list[int] = []

    def frame(self, step: int) -> tuple[Tensor, Tensor] | None:
        if self.frames is None:
            return None
        parity = step % 2
        everything = self.frames.tokens(parity, 0, self.frames.starts[-1])
        return everything, self.frames.tokens(parity, *self.frames.band(self.index))

    def fresh_frame(self, step: int) -> tuple[Tensor, Tensor, Tensor] | None:
        if self.frames is None:
            return None
        context = self.frames.tokens((step + 1) % 2, 0, self.frames.starts[-1])
        own = self.frames.band(self.index)
        return context, self.frames.tokens(step % 2, *own), self.frames.tokens((step + 1) % 2, *own)

    def post_filled(self, step: int) -> None:
        assert self.frames is not None
        self.filled_steps.append(step)
        self.post(step, self.frames.tokens(step % 2, *self.frames.band(self.index)))

    def post(self, step: int, own: Tensor) -> None:
        self.posted_steps.append(step)
        self.box.put(step, self.index, "block", _clone(own))

    def wait(self, step: int) -> list[Tensor | None]:
        blocks = [
            None if band == self.index else self.box.get(step, band, "block")
            for band in range(self.n)
        ]
        if self.frames is not None:  # as MPI would have received them
            for band, block in enumerate(blocks):
                if block is not None:
                    self.frames.tokens((step + 1) % 2, *self.frames.band(band)).copy_(block)
        return blocks


class FakeAllreduce:
    """Band ``index``'s end of a statistics all-reduce."""

    def __init__(self, box: Mailbox, index: int, n_bands: int) -> None:
        self.box, self.index, self.n = box, index, n_bands

    def post(self, step: int, local: Tensor) -> None:
        self.box.put(step, self.index, "stats", _clone(local))

    def wait(self, step: int) -> Tensor:
        return sum(self.box.get(step, band, "stats") for band in range(self.n))  # type: ignore[return-value]

    def wait_others(self, step: int) -> Tensor:
        assert self.box.posted(step, self.index, "stats"), f"step {step} never posted"
        return self.wait(step) - self.box.get(step, self.index, "stats")


class FakeStepStats:
    """Band ``index``'s end of the per-step statistics all-reduce of ``shapes`` norms: the
    norms' statistics of a step travel together once the last one is written."""

    def __init__(self, box: Mailbox, index: int, n_bands: int, shapes: Sequence[Shape]) -> None:
        self.box, self.index, self.n = box, index, n_bands
        self.shapes = list(shapes)
        self.written: dict[int, dict[int, Tensor]] = {}
        self.posted_steps: list[int] = []
        self.read_steps: list[int] = []

    def local(self, step: int, index: int) -> Tensor:
        slot = self.written.setdefault(step, {})[index] = torch.empty(
            self.shapes[index], dtype=torch.float64
        )
        return slot

    def contributed(self, step: int) -> None:
        if len(self.written[step]) == len(self.shapes):
            self.posted_steps.append(step)
            self.box.put(
                step,
                self.index,
                "all",
                [self.written[step][k].clone() for k in range(len(self.shapes))],
            )

    def others(self, step: int, index: int) -> Tensor:
        self.read_steps.append(step)
        bands = [b for b in range(self.n) if b != self.index]
        return sum(self.box.get(step, b, "all")[index] for b in bands)  # type: ignore[return-value]


def run_bands(fns: Sequence[Callable[[], Tensor]]) -> list[Tensor]:
    """Run one callable per band concurrently (as ranks would) and return their results."""
    with ThreadPoolExecutor(max_workers=len(fns)) as pool:
        futures = [pool.submit(fn) for fn in fns]
        return [f.result(timeout=2 * TIMEOUT_S) for f in futures]


def split_rows(x: Tensor, rows: Sequence[int], dim: int = 2) -> list[Tensor]:
    return list(torch.split(x, list(rows), dim=dim))


class FakeComm:
    """What a family's ``parallelize`` asks of a RankComm
    (:class:`~pcpp_mpi.parallel.band_comm.BandComm`), in memory: every exchange name gets one
    mailbox shared by the bands."""

    def __init__(self, boxes: dict[str, Mailbox], lock: threading.Lock, index: int, n: int) -> None:
        self.topology = Topology(n, index, 1)
        self._boxes, self._lock, self._index, self._n = boxes, lock, index, n

    def _box(self, name: str) -> Mailbox:
        with self._lock:
            return self._boxes.setdefault(name, Mailbox())

    def wire_spec(self, device: torch.device, dtype: torch.dtype) -> WireSpec:
        return WireSpec(device, device, dtype)

    def host_wire_spec(self, device: torch.device, dtype: torch.dtype) -> WireSpec:
        return WireSpec(device, CPU, dtype)

    def token_frames(
        self, wire: WireSpec, *, batch: int, channels: int, band_tokens: Sequence[int]
    ) -> TokenFrames:
        return TokenFrames(wire, batch=batch, channels=channels, band_tokens=band_tokens)

    def neighbour_exchange(
        self,
        name: str,
        kind: str,
        *,
        send_shapes: tuple[Shape | None, Shape | None],
        recv_shapes: tuple[Shape | None, Shape | None],
        frames: TokenFrames | None = None,
        frame_band: int | None = None,
        **_: object,
    ) -> FakeRows:
        assert frame_band in (None, self._index)
        return FakeRows(self._box(name), self._index, self._n, send_shapes, recv_shapes, frames)

    def all_bands_exchange(
        self, name: str, kind: str, *, frames: TokenFrames | None = None, **_: object
    ) -> FakeBlocks:
        return FakeBlocks(self._box(name), self._index, self._n, frames)

    def stats_allreduce(self, name: str, kind: str, **_: object) -> FakeAllreduce:
        return FakeAllreduce(self._box(name), self._index, self._n)

    def step_stats_allreduce(
        self, name: str, kind: str, *, shapes: Sequence[Shape], **_: object
    ) -> FakeStepStats:
        return FakeStepStats(self._box(name), self._index, self._n, shapes)


def filled_steps(layer: Attention) -> list[int]:
    """Steps whose send buffers the layer's processor filled itself."""
    processor = layer.processor
    assert isinstance(processor, BandSelfAttnProcessor)
    exchange = processor.rows if processor.pattern == "pcpp" else processor.blocks
    assert isinstance(exchange, FakeRows | FakeBlocks)
    return exchange.filled_steps
