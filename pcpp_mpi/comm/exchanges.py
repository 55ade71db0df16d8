"""Exchanges: objects with an explicit post/wait life cycle over preallocated buffers.

Every exchange keeps two buffer sets; the data of step ``t`` travels in set ``t % 2``, so a
displaced step ``t`` can read what step ``t - 1`` received while posting its own data for step
``t + 1``. Misuse raises :class:`ExchangeError`: posting a set whose previous step was never
completed, or waiting for a step that was not posted.

Buffers live in *wire memory*: pinned host memory when MPI cannot take device pointers (data is
copied in and out on the compute stream), or the compute device itself when the MPI library is
CUDA-aware. Layers see only tensors on their compute device. On a GPU, ``post`` only queues the
copies and records an event; the MPI calls start once the event has completed (see
:mod:`pcpp_mpi.comm.deferred`), so the host keeps launching kernels.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Generic, TypeVar

import torch
from mpi4py import MPI

from pcpp_mpi.comm.capture import StepRecorder
from pcpp_mpi.comm.deferred import DeferredStarts, ReadyEvent
from pcpp_mpi.comm.traffic import TrafficCounter
from pcpp_mpi.comm.wire import WireSpec
from pcpp_mpi.trace.recorder import Tracer

__all__ = [
    "AllBandsExchange",
    "ExchangeError",
    "NeighbourExchange",
    "StatsAllreduce",
    "WireSpec",
    "mpi_buffer",
]

if TYPE_CHECKING:
    from pcpp_mpi.comm.frames import TokenFrames


class ExchangeError(RuntimeError):
    """An exchange was used out of order (wait without post, post over a pending set...)."""


def mpi_buffer(tensor: torch.Tensor) -> list:
    """``[buffer, MPI.BYTE]`` for a contiguous tensor (half types travel as raw bytes)."""
    if not tensor.is_contiguous():
        raise ExchangeError("MPI buffers must be contiguous")
    raw = tensor.view(-1).view(torch.uint8)
    if raw.device.type == "cpu":
        return [raw.numpy(), MPI.BYTE]
    return [raw, MPI.BYTE]


def _spec(tensor: torch.Tensor | None) -> list | None:
    return None if tensor is None else mpi_buffer(tensor)


def _allocate(wire: WireSpec, peer: int | None, shape: Sequence[int] | None) -> torch.Tensor | None:
    return None if peer is None or shape is None else wire.empty(shape)


def _frame_tokens(
    frames: TokenFrames, peer: int | None, shape: Sequence[int] | None, name: str
) -> int:
    """Tokens of a ``(B, n, C)`` message placed in ``frames`` (0 when there is none)."""
    if peer is None or shape is None:
        return 0
    if len(shape) != 3 or (shape[0], shape[2]) != (frames.batch, frames.channels):
        raise ValueError(
            f"{name}: a message of shape {tuple(shape)} does not fit frames of batch "
            f"{frames.batch} and {frames.channels} channels"
        )
    return int(shape[1])


class _TwoSets:
    """Book-keeping of the two buffer sets: which step each holds and its pending requests.

    Waits are reported to the tracer (the time the caller was blocked: exposed communication)
    and marked as ranges ``wait NAME`` in its :attr:`~pcpp_mpi.trace.recorder.Tracer.ranges`.
    """

    def __init__(self, name: str, tracer: Tracer, deferred: DeferredStarts) -> None:
        self.name = name
        self.wait_range = f"wait {name}"
        self.tracer = tracer
        self.deferred = deferred
        self.step: list[int | None] = [None, None]
        self.requests: list[list[MPI.Request]] = [[], []]
        self.completed: list[bool] = [True, True]
        self.started: list[bool] = [True, True]

    def begin_post(self, step: int) -> int:
        parity = step % 2
        if not self.completed[parity]:
            raise ExchangeError(
                f"{self.name}: step {step} posted while step {self.step[parity]} is still pending"
            )
        if self.step[parity] == step:
            raise ExchangeError(f"{self.name}: step {step} posted twice")
        self.step[parity] = step
        self.completed[parity] = False
        self.started[parity] = False
        return parity

    def check_free(self, step: int) -> None:
        """Raise unless the buffer set of ``step`` may be written (its previous step, two
        earlier, has completed)."""
        parity = step % 2
        if not self.completed[parity]:
            raise ExchangeError(
                f"{self.name}: buffers of step {step} requested while step "
                f"{self.step[parity]} is still pending"
            )

    def start(self, parity: int, requests: list[MPI.Request]) -> None:
        """The MPI operations of a set have been started (maybe later than its post)."""
        self.requests[parity].extend(requests)
        self.started[parity] = True

    def complete(self, step: int) -> int:
        parity = step % 2
        if self.step[parity] != step:
            raise ExchangeError(f"{self.name}: wait for step {step}, which was never posted")
        if not self.completed[parity]:
            ranges = self.tracer.ranges
            ranges.push(self.wait_range)
            blocked_from = self._finish(parity)
            ranges.pop()
            self.tracer.waited(self.name, step, blocked_from, self.tracer.now())
            self.requests[parity] = []
            self.completed[parity] = True
        return parity

    def _finish(self, parity: int) -> float:
        """Block until the requests of set ``parity`` completed. While MPI starts of this rank
        still wait for the GPU, keep starting them as their events complete (so no two ranks
        wait on each other's unstarted sends) without blocking on the GPU queue; once none
        is pending, block in MPI.

        Returns when blocking in MPI began: only that part is *exposed* communication (every
        send of this rank has started, so its GPU has finished the work queued before them);
        the time before it is this rank's host waiting for its own GPU.
        """
        requests = self.requests[parity]
        while len(self.deferred):
            if self.started[parity] and MPI.Request.Testall(requests):
                return self.tracer.now()
            self.deferred.progress()
        blocked_from = self.tracer.now()
        MPI.Request.Waitall(requests)
        return blocked_from

    def drain(self) -> None:
        """Complete every pending set (a run stopped between a post and its wait): MPI must
        not be left writing into buffers that are about to be freed."""
        for parity in (0, 1):
            if not self.completed[parity]:
                self.deferred.flush()
                MPI.Request.Waitall(self.requests[parity])
                self.requests[parity] = []
                self.completed[parity] = True

    def reset(self) -> None:
        """Forget finished steps (a new image starts at step 0); pending ones are an error."""
        for parity in (0, 1):
            if not self.completed[parity]:
                raise ExchangeError(f"{self.name}: step {self.step[parity]} still pending")
        self.step = [None, None]


_Received = TypeVar("_Received")


class _Exchange(Generic[_Received]):
    """The life cycle every exchange shares; subclasses say only what differs.

    :meth:`_post` books the buffer set of a step (:class:`_TwoSets`), queues the copies of the
    data into it (:meth:`_stage`) and submits the start of its MPI operations (:meth:`_start`)
    to run once those copies are on the device; :meth:`wait` completes the set and returns
    what it received (:meth:`_received`). While the recorder records a step (a CUDA graph
    being captured), both only queue the GPU part and report the host part to the recorder,
    which replays it through :meth:`launch` and :meth:`complete`: this class is the one place
    that tells eager calls, recording and replay apart.
    """

    def __init__(
        self,
        *,
        name: str,
        kind: str,
        wire: WireSpec,
        counter: TrafficCounter,
        tracer: Tracer,
        deferred: DeferredStarts,
        recorder: StepRecorder,
    ) -> None:
        self.name = name
        self.kind = kind
        self._wire = wire
        self._counter = counter
        self._tracer = tracer
        self._deferred = deferred
        self._recorder = recorder
        self._sets = _TwoSets(name, tracer, deferred)

    # -- what each exchange says ----------------------------------------------------------------

    def _stage(self, parity: int, data: Sequence[torch.Tensor | None]) -> None:
        """Queue the copies of ``data`` (the tensors given to ``post``) into send set
        ``parity``."""
        raise NotImplementedError

    def _messages(self, parity: int) -> list[tuple[int, int, int]]:
        """``(peer, bytes sent, bytes received)`` of each message of set ``parity``."""
        raise NotImplementedError

    def _start(self, parity: int) -> list[MPI.Request]:
        """Start the MPI operations of set ``parity`` (its send buffers are filled)."""
        raise NotImplementedError

    def _received(self, parity: int) -> _Received:
        """What :meth:`wait` returns for a step of set ``parity``."""
        raise NotImplementedError

    def _completed(self, parity: int) -> None:
        """Set ``parity`` has completed (nothing to do unless an exchange says so)."""

    # -- the life cycle -------------------------------------------------------------------------

    def _post(self, step: int, data: Sequence[torch.Tensor | None] | None) -> None:
        """Post ``step``: stage ``data`` (``None``: the caller filled the send buffers), then
        start its MPI operations, or only note the post while a step is being recorded."""
        recording = self._recorder.recording
        parity = step % 2 if recording else self._sets.begin_post(step)
        if data is not None:
            self._stage(parity, data)
        if recording:
            self._recorder.note_post(self, step)
        else:
            self._submit(step, parity)

    def launch(self, step: int, ready: ReadyEvent | None = None) -> None:
        """The MPI part of posting ``step`` (a replayed graph fills the send set; ``ready``,
        if given, completes once it has)."""
        self._submit(step, self._sets.begin_post(step), ready)

    def _submit(self, step: int, parity: int, ready: ReadyEvent | None = None) -> None:
        messages = self._messages(parity)
        sent, received = sum(m[1] for m in messages), sum(m[2] for m in messages)
        self._counter.add(step, self.kind, sent=sent, received=received)
        if ready is None:
            ready = self._wire.ready_event()
        self._deferred.submit(ready, lambda: self._begin(step, parity, messages))

    def _begin(self, step: int, parity: int, messages: list[tuple[int, int, int]]) -> None:
        self._sets.start(parity, self._start(parity))
        self._tracer.posted(self.name, self.kind, step, messages)

    def wait(self, step: int) -> _Received:
        """What was received for ``step`` (see the exchange's ``_received``)."""
        self._arrive(step)
        return self._received(step % 2)

    def _arrive(self, step: int) -> None:
        """Complete ``step``, or only note the wait while a step is being recorded."""
        if self._recorder.recording:
            self._recorder.note_wait(self, step)
        else:
            self.complete(step)

    def complete(self, step: int) -> None:
        """The MPI part of :meth:`wait`."""
        self._deferred.progress()
        self._completed(self._sets.complete(step))

    def check_free(self, step: int) -> None:
        """Raise unless the buffers of ``step`` may be written (step ``step - 2`` completed;
        not checked while a step is recorded: its replay is checked)."""
        if not self._recorder.recording:
            self._sets.check_free(step)

    def _check_posted(self, step: int) -> None:
        """Raise unless ``step`` was posted (not checked while a step is recorded)."""
        if not self._recorder.recording and self._sets.step[step % 2] != step:
            raise ExchangeError(f"{self.name}: step {step} was never posted")

    def reset(self) -> None:
        """Forget finished steps (a new image starts at step 0)."""
        self._sets.reset()

    def drain(self) -> None:
        """Complete every pending step (a run stopped between a post and its wait)."""
        self._sets.drain()


class NeighbourExchange(_Exchange[tuple[torch.Tensor | None, torch.Tensor | None]]):
    """Rows to and from the bands directly above (``up``) and below (``down``).

    Used for convolution halos and for the K/V rows a ``pcpp`` rank attends to. Shapes are
    local (per message); a missing neighbour (image edge) has shape ``None``. :meth:`wait`
    returns the rows received for a step: ``(from_up, from_down)``, ``None`` at image edges.
    """

    def __init__(
        self,
        *,
        name: str,
        kind: str,
        comm: MPI.Comm,
        up: int | None,
        down: int | None,
        tag: int,
        send_shapes: tuple[Sequence[int] | None, Sequence[int] | None],
        recv_shapes: tuple[Sequence[int] | None, Sequence[int] | None],
        wire: WireSpec,
        counter: TrafficCounter,
        tracer: Tracer,
        deferred: DeferredStarts,
        recorder: StepRecorder,
        frames: TokenFrames | None = None,
        frame_band: int | None = None,
    ) -> None:
        super().__init__(
            name=name,
            kind=kind,
            wire=wire,
            counter=counter,
            tracer=tracer,
            deferred=deferred,
            recorder=recorder,
        )
        self._comm = comm
        self._peers = (up, down)
        self._tag = tag
        self._frames = frames
        self._window: tuple[int, int, int, int] | None = None
        # per set and side: the buffers as layers see them, and as MPI sees them (contiguous)
        send_wire: list[list[torch.Tensor | None]]
        recv_wire: list[list[torch.Tensor | None]]
        if frames is None:
            send_wire, recv_wire = (
                [[_allocate(wire, p, s) for p, s in zip(self._peers, shapes, strict=True)]
                 for _ in range(2)]
                for shapes in (send_shapes, recv_shapes)
            )  # fmt: skip
            self._send, self._recv = send_wire, recv_wire
        else:
            if frame_band is None:
                raise ValueError(f"{name}: frames need the band they are placed around")
            to_up, to_down, from_up, from_down = (
                _frame_tokens(frames, peer, shape, name)
                for shapes in (send_shapes, recv_shapes)
                for peer, shape in zip(self._peers, shapes, strict=True)
            )
            start, stop = frames.band(frame_band)
            sends = ((start, start + to_up), (stop - to_down, stop))
            recvs = ((start - from_up, start), (stop, stop + from_down))
            self._window = (start - from_up, start, stop, stop + from_down)

            def place(parity: int, ranges: tuple[tuple[int, int], ...]) -> list:
                return [None if a == b else frames.wire_tokens(parity, a, b) for a, b in ranges]

            # set p sends from frame p and receives into frame p + 1 (see frames.py)
            send_wire = [place(p, sends) for p in (0, 1)]
            recv_wire = [place(1 - p, recvs) for p in (0, 1)]
            self._send, self._recv = (
                [[None if b is None else b.transpose(0, 1) for b in sides] for sides in sets]
                for sets in (send_wire, recv_wire)
            )
        # MPI message specs of every buffer, built once (converting them per call was a
        # measurable host cost per exchange: docs/BENCHMARKS.md, "Cheaper host side")
        self._send_spec = [[_spec(b) for b in sides] for sides in send_wire]
        self._recv_spec = [[_spec(b) for b in sides] for sides in recv_wire]

    def post(self, step: int, to_up: torch.Tensor | None, to_down: torch.Tensor | None) -> None:
        """Start receiving step ``step``'s rows from both neighbours and send ours."""
        self._post(step, (to_up, to_down))

    def post_filled(self, step: int) -> None:
        """As :meth:`post`, with the send buffers already written in place (the own part of
        :meth:`frame`, by work queued on the compute stream)."""
        self._post(step, None)

    def frame(self, step: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """For a displaced step ``step``, which reads what step ``step - 1`` received, when
        the exchange lives in :class:`~pcpp_mpi.comm.frames.TokenFrames` on the compute
        device (``None`` otherwise): ``(context, own)``, views of frame ``step % 2``.

        ``context`` ``(B, n_up + N + n_down, C)``: the rows received from the band above,
        this band's tokens, the rows received from the band below; the received rows are
        valid once the wait for step ``step - 1`` (of this exchange, or of the all-bands
        exchange sharing the frames after a ``sync`` step) returned. ``own`` ``(B, N, C)``:
        this band's part, for the caller to fill with its fresh data (which fills the send
        buffers of ``step``) before :meth:`post_filled`.
        """
        if self._frames is None or self._window is None or not self._frames.readable_in_place:
            return None
        self.check_free(step)
        first, start, stop, last = self._window
        parity = step % 2
        return self._frames.tokens(parity, first, last), self._frames.tokens(parity, start, stop)

    def _stage(self, parity: int, data: Sequence[torch.Tensor | None]) -> None:
        """Queue the copies of the rows to send (to the band above, to the band below)."""
        for side, rows in enumerate(data):
            send = self._send[parity][side]
            if send is not None:
                if rows is None:
                    raise ExchangeError(f"{self.name}: no data for neighbour {self._peers[side]}")
                send.copy_(rows, non_blocking=True)

    def _messages(self, parity: int) -> list[tuple[int, int, int]]:
        messages = []
        for side in (0, 1):
            peer = self._peers[side]
            recv, send = self._recv[parity][side], self._send[parity][side]
            if peer is not None and (recv is not None or send is not None):
                sent = 0 if send is None else send.nbytes
                messages.append((peer, sent, 0 if recv is None else recv.nbytes))
        return messages

    def _start(self, parity: int) -> list[MPI.Request]:
        requests: list[MPI.Request] = []
        tag = 2 * self._tag + parity
        for side in (0, 1):
            peer = self._peers[side]
            if peer is None:
                continue
            recv = self._recv_spec[parity][side]
            if recv is not None:
                requests.append(self._comm.Irecv(recv, source=peer, tag=tag))
            send = self._send_spec[parity][side]
            if send is not None:
                requests.append(self._comm.Isend(send, dest=peer, tag=tag))
        return requests

    def _received(self, parity: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        up, down = self._recv[parity]
        return (
            None if up is None else self._wire.to_compute(up),
            None if down is None else self._wire.to_compute(down),
        )


class AllBandsExchange(_Exchange[list[torch.Tensor | None]]):
    """A band's block to every other band of its group, and theirs to it (full K/V context).

    :meth:`wait` returns every band's block for a step in band order, ``None`` at this rank's
    own index.
    """

    def __init__(
        self,
        *,
        name: str,
        kind: str,
        comm: MPI.Comm,
        tag: int,
        shapes: Sequence[Sequence[int]],
        wire: WireSpec,
        counter: TrafficCounter,
        tracer: Tracer,
        deferred: DeferredStarts,
        recorder: StepRecorder,
        frames: TokenFrames | None = None,
    ) -> None:
        super().__init__(
            name=name,
            kind=kind,
            wire=wire,
            counter=counter,
            tracer=tracer,
            deferred=deferred,
            recorder=recorder,
        )
        self._comm = comm
        self._rank = comm.Get_rank()
        self._tag = tag
        self._frames = frames
        own = self._rank
        if frames is None:
            send_wire = [wire.empty(shapes[own]) for _ in range(2)]
            recv_wire = [
                [None if band == own else wire.empty(shape) for band, shape in enumerate(shapes)]
                for _ in range(2)
            ]
            self._send, self._recv = send_wire, recv_wire
        else:
            if [_frame_tokens(frames, band, shape, name) for band, shape in enumerate(shapes)] != [
                b - a for a, b in itertools.pairwise(frames.starts)
            ]:
                raise ValueError(f"{name}: blocks {list(shapes)} do not match the frames")
            # set p sends from frame p and receives into frame p + 1 (see frames.py)
            send_wire = [frames.wire_tokens(p, *frames.band(own)) for p in (0, 1)]
            recv_wire = [[None if band == own else frames.wire_tokens(1 - p, *frames.band(band))
                          for band in range(len(shapes))] for p in (0, 1)]  # fmt: skip
            self._send = [b.transpose(0, 1) for b in send_wire]
            self._recv = [[None if b is None else b.transpose(0, 1) for b in bands]
                          for bands in recv_wire]  # fmt: skip
        self._send_spec = [mpi_buffer(b) for b in send_wire]
        self._recv_spec = [[_spec(b) for b in bands] for bands in recv_wire]

    def post(self, step: int, own: torch.Tensor) -> None:
        """Start receiving every other band's block of step ``step`` and send ours."""
        self._post(step, (own,))

    def post_filled(self, step: int) -> None:
        """As :meth:`post`, with the own block of :meth:`frame` already written."""
        self._post(step, None)

    def frame(self, step: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """For a displaced step ``step``, which reads what step ``step - 1`` received, when
        the exchange lives in :class:`~pcpp_mpi.comm.frames.TokenFrames` on the compute
        device (``None`` otherwise): ``(context, own)``, views of frame ``step % 2``:
        every band's block ``(B, N_total, C)`` (the others' valid once the wait for step
        ``step - 1`` returned) and this band's ``(B, N, C)`` (the send buffer of ``step``),
        for the caller to fill before :meth:`post_filled`."""
        frames = self._frames
        if frames is None or not frames.readable_in_place:
            return None
        self.check_free(step)
        parity = step % 2
        return frames.tokens(parity, 0, frames.starts[-1]), self._send[parity]

    def fresh_frame(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """For a ``sync`` step ``step``, which reads what step ``step`` itself receives, when
        the exchange lives in frames on the compute device (``None`` otherwise):
        ``(context, send, own)``. ``send`` ``(B, N, C)``: this band's block in frame
        ``step % 2`` (the send buffer of ``step``), for the caller to fill before
        :meth:`post_filled`; ``context`` ``(B, N_total, C)``: frame ``(step + 1) % 2``, where
        the other bands' blocks arrive (valid once the wait for ``step`` returned), whose own
        part ``own`` the caller fills with a copy of ``send``. That part is the send buffer
        of ``step + 1``, so both sets must be free."""
        frames = self._frames
        if frames is None or not frames.readable_in_place:
            return None
        self.check_free(step)
        self.check_free(step + 1)
        parity = step % 2
        context = frames.tokens(1 - parity, 0, frames.starts[-1])
        return context, self._send[parity], self._send[1 - parity]

    def _stage(self, parity: int, data: Sequence[torch.Tensor | None]) -> None:
        self._send[parity].copy_(data[0], non_blocking=True)

    def _messages(self, parity: int) -> list[tuple[int, int, int]]:
        send = self._send[parity]
        return [
            (band, send.nbytes, recv.nbytes)
            for band, recv in enumerate(self._recv[parity])
            if recv is not None
        ]

    def _start(self, parity: int) -> list[MPI.Request]:
        requests: list[MPI.Request] = []
        tag = 2 * self._tag + parity
        for band, recv in enumerate(self._recv_spec[parity]):
            if recv is not None:
                requests.append(self._comm.Irecv(recv, source=band, tag=tag))
        buffer = self._send_spec[parity]
        for band, recv in enumerate(self._recv_spec[parity]):
            if recv is not None:
                requests.append(self._comm.Isend(buffer, dest=band, tag=tag))
        return requests

    def _received(self, parity: int) -> list[torch.Tensor | None]:
        return [None if r is None else self._wire.to_compute(r) for r in self._recv[parity]]


class StatsAllreduce(_Exchange[torch.Tensor]):
    """Sum of per-band statistics over all bands of a group (GroupNorm sums and counts).

    Statistics travel as float64 host tensors (pinned when the compute device is a GPU): they
    are a few numbers. ``post`` takes them on the compute device; :meth:`wait` (the group-wide
    sum for a step), :meth:`wait_others` and :meth:`posted` return host tensors.
    """

    def __init__(
        self,
        *,
        name: str,
        kind: str,
        comm: MPI.Comm,
        shape: Sequence[int],
        wire: WireSpec,
        counter: TrafficCounter,
        tracer: Tracer,
        deferred: DeferredStarts,
        recorder: StepRecorder,
    ) -> None:
        host = WireSpec(wire.compute_device, torch.device("cpu"), torch.float64)
        super().__init__(
            name=name,
            kind=kind,
            wire=host,
            counter=counter,
            tracer=tracer,
            deferred=deferred,
            recorder=recorder,
        )
        self._comm = comm
        self._local = [host.empty(shape) for _ in range(2)]
        self._global = [host.empty(shape) for _ in range(2)]
        self._others = [host.empty(shape) for _ in range(2)]
        self._wants_others = False
        self._local_spec = [[b.numpy(), MPI.DOUBLE] for b in self._local]
        self._global_spec = [[b.numpy(), MPI.DOUBLE] for b in self._global]

    def post(self, step: int, local: torch.Tensor) -> None:
        """Start summing this rank's statistics of step ``step`` over the group."""
        self._post(step, (local,))

    def wait_others(self, step: int) -> torch.Tensor:
        """The sum over the *other* bands for ``step`` (host tensor): the group-wide sum minus
        this rank's contribution, computed on the host when the allreduce completes, so a
        displaced step adds its fresh share with one copy and one addition on the device.

        The buffer of a parity is rewritten when step ``step + 2`` completes; that completion
        needs step ``step + 2``'s allreduce started, hence its statistics copied, hence every
        earlier kernel and copy on the compute stream (this step's reads included) done.
        """
        self._wants_others = True
        self._arrive(step)
        return self._others[step % 2]

    def posted(self, step: int) -> torch.Tensor:
        """What this rank contributed for ``step`` (for the displaced correction)."""
        self._check_posted(step)
        return self._local[step % 2]

    def _stage(self, parity: int, data: Sequence[torch.Tensor | None]) -> None:
        self._local[parity].copy_(data[0], non_blocking=True)

    def _messages(self, parity: int) -> list[tuple[int, int, int]]:
        nbytes = self._local[parity].nbytes
        return [(-1, nbytes, nbytes)]

    def _start(self, parity: int) -> list[MPI.Request]:
        return [
            self._comm.Iallreduce(self._local_spec[parity], self._global_spec[parity], op=MPI.SUM)
        ]

    def _received(self, parity: int) -> torch.Tensor:
        return self._global[parity]

    def _completed(self, parity: int) -> None:
        """Keep the sum over the other bands when a caller wants it (:meth:`wait_others`)."""
        if self._wants_others:
            torch.sub(self._global[parity], self._local[parity], out=self._others[parity])
