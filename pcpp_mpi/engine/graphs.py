"""A model call of a denoising step, replayed as CUDA graphs with MPI between them.

Generic over the model family: the family gives the call (:meth:`ModelFamily.call
<pcpp_mpi.families.base.ModelFamily.call>`) and its inputs type
(:class:`~pcpp_mpi.families.base.StepInputs`: static copies the graphs read).

Kernel launches bound an eager UNet step on a GPU, and a rank with a band of the image has even
less work per kernel. A step is therefore captured once per *variant* — its kind, the previous
step's kind and its parity (which buffer set it reads and fills) — and replayed afterwards.
MPI cannot be captured: while a step is captured, the exchanges only queue their copies and
record their MPI actions (:mod:`pcpp_mpi.comm.capture`), with an event recorded inside the
graph after each send buffer is filled; every wait for data of the same step ends one graph and
begins the next. A replay runs the graphs in order: after each, it queues the segment's sends
(each starts when its in-graph event completes) and completes the wait the next graph depends
on; the waits for data of earlier steps are all completed before the first such wait (those
the first graph reads, before it is launched). A
displaced step is thus two graphs (the fresh latent halo of ``conv_in``, then the whole UNet),
and while the GPU runs the second the host sits in MPI, starting each send as soon as the GPU
has produced it and progressing the transfers.

The first model call of a context runs eagerly (it initialises cuBLAS, cuDNN and the attention
kernels, which must not happen during a capture) and its variant is captured right after it;
every other variant is captured the first time it is needed. All graphs share one memory
pool; only their outputs outlive a replay.

``emulate`` (CPU) does the same book-keeping without CUDA: the step is "captured" by running it
with the exchanges recording, and "replayed" by running it again while the recorded actions,
not the layers, drive MPI — checked segment by segment against the recording. It tests the
replay logic in CI, where there is no GPU.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Literal

import torch
from torch import nn

from pcpp_mpi.comm.capture import RecordedStep, StepRecorder
from pcpp_mpi.comm.deferred import DeferredStarts, ReadyEvent
from pcpp_mpi.families.base import InputsT
from pcpp_mpi.logs import EVERY_RANK
from pcpp_mpi.parallel.clock import StepClock

every_rank = logging.getLogger(EVERY_RANK)

VariantKey = tuple[str, str | None, int]


class GraphError(RuntimeError):
    """A step could not be captured (e.g. an operation that synchronises with the host)."""


@dataclass
class _CudaVariant:
    graphs: list[torch.cuda.CUDAGraph]
    recorded: RecordedStep
    output: torch.Tensor
    events: list[ReadyEvent] = field(init=False)  # recorded by the graphs, one per post

    def __post_init__(self) -> None:
        self.events = [
            action.ready
            for segment in self.recorded.segments
            for action in segment.posts
            if action.ready is not None
        ]

    def replay(self, step: int) -> torch.Tensor:
        for index, graph in enumerate(self.graphs):
            self.recorded.before_segment(index, step)
            graph.replay()
            self.recorded.after_segment(index, step)
        return self.output


class StepGraphs(Generic[InputsT]):
    """Runs ``network`` for the step the clock is at: eagerly, or by replaying a captured
    variant. ``call(model, inputs)`` calls it (the family's :meth:`call`; ``model`` is the
    network or it compiled) and returns its output tensor.

    ``backend`` ``cuda`` captures CUDA graphs (device must be a GPU); ``emulate`` replays the
    recorded MPI actions on any device (see the module docstring); ``eager`` never captures.
    ``deferred`` holds the MPI starts waiting for events: a variant's events are re-recorded by
    its next replay, so starts still waiting for them run first.

    ``compiled`` (``runtime.compile``): ``network`` compiled by ``torch.compile``, called instead
    of it in the steps whose phase is in ``compiled_phases``. Its code depends on the step's
    phase only; the first step of each such phase first runs it once with the exchanges
    recording (a *dry run*: no MPI, result discarded), which compiles it, so compilation never
    happens inside a CUDA graph capture nor while the other ranks wait for this one in MPI.
    ``compile_times`` holds each phase's seconds.
    """

    def __init__(
        self,
        network: nn.Module,
        call: Callable[[Callable[..., Any], InputsT], torch.Tensor],
        recorder: StepRecorder,
        device: torch.device,
        backend: Literal["cuda", "emulate", "eager"],
        deferred: DeferredStarts | None = None,
        compiled: Callable[..., object] | None = None,
        compiled_phases: frozenset[str] = frozenset(),
    ) -> None:
        if backend == "cuda" and device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        self.network = network
        self.call = call
        self.compiled = compiled
        self.compiled_phases = compiled_phases if compiled is not None else frozenset()
        self.compile_times: dict[str, float] = {}
        self.recorder = recorder
        self.device = device
        self.backend = backend
        self.deferred = deferred or DeferredStarts()
        self.captures = 0
        self.replays = 0
        self._warm = False
        self._static: InputsT | None = None
        self._cuda: dict[VariantKey, _CudaVariant] = {}
        self._emulated: dict[VariantKey, RecordedStep] = {}
        self._pool = torch.cuda.graph_pool_handle() if backend == "cuda" else None
        self._stream = torch.cuda.Stream(device) if backend == "cuda" else None

    def _eager(self, inputs: InputsT, phase: str) -> torch.Tensor:
        model = self.compiled if phase in self.compiled_phases else self.network
        assert model is not None
        return self.call(model, inputs)

    def _compile_phase(self, clock: StepClock, inputs: InputsT) -> None:
        """Compile the network for ``clock.phase`` by a dry run of this step (see the class)."""
        phase = clock.phase
        every_rank.info(
            "compiling the network for %s steps (torch.compile; minutes the first time, less "
            "with a warm cache)",
            phase,
        )
        started = time.perf_counter()
        self.recorder.start(clock.step)
        try:
            self._eager(inputs, phase)
        finally:
            self.recorder.stop()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.compile_times[phase] = time.perf_counter() - started
        every_rank.info(
            "compiled the network for %s steps in %.1f s", phase, self.compile_times[phase]
        )

    def __call__(self, clock: StepClock, inputs: InputsT) -> torch.Tensor:
        """The network's output (local, e.g. ``(B, C, rows, W)``) at step ``clock.step``."""
        phase = clock.phase
        if phase in self.compiled_phases and phase not in self.compile_times:
            self._compile_phase(clock, inputs)
        if self.backend == "eager":
            return self._eager(inputs, phase)
        key: VariantKey = (clock.kind, clock.previous_kind, clock.step % 2)
        if not self._warm:
            # the first call initialises libraries eagerly; its variant is captured right
            # after it (capturing executes nothing), for the next image
            self._warm = True
            output = self._eager(inputs, phase)
            if self.backend == "cuda":
                self._static = inputs.clone()
                self._cuda[key] = self._capture(clock.step, phase, self._static)
            return output
        if self.backend == "emulate":
            return self._emulate(key, clock.step, phase, inputs)
        variant = self._cuda.get(key)
        assert self._static is not None
        inputs.copy_into(self._static)
        if variant is None:
            variant = self._capture(clock.step, phase, self._static)
            self._cuda[key] = variant
        self.replays += 1
        self.deferred.start_all_using(variant.events)
        return variant.replay(clock.step)

    def captured(self) -> dict[VariantKey, list[torch.cuda.CUDAGraph]]:
        """The CUDA graphs of every variant captured so far, in replay order (for tools that
        time a step's GPU work alone: replaying them without the MPI actions between them)."""
        return {key: list(variant.graphs) for key, variant in self._cuda.items()}

    # ------------------------------------------------------------------ CUDA graphs
    def _capture(self, step: int, phase: str, static: InputsT) -> _CudaVariant:
        assert self._stream is not None
        torch.cuda.synchronize(self.device)
        graphs = [torch.cuda.CUDAGraph()]

        def begin(graph: torch.cuda.CUDAGraph) -> None:
            graph.capture_begin(pool=self._pool, capture_error_mode="thread_local")

        def next_graph() -> None:
            graphs[-1].capture_end()
            graphs.append(torch.cuda.CUDAGraph())
            begin(graphs[-1])

        def ready_event() -> torch.cuda.Event:
            event = torch.cuda.Event(external=True)  # an event node the host can query
            event.record()
            return event

        current = torch.cuda.current_stream(self.device)
        self._stream.wait_stream(current)
        with torch.cuda.stream(self._stream):
            begin(graphs[0])
            self.recorder.start(step, next_graph, ready_event)
            try:
                output = self._eager(static, phase)
            except Exception as error:
                self.recorder.stop()
                with contextlib.suppress(Exception):  # the capture is broken anyway
                    graphs[-1].capture_end()
                raise GraphError(
                    f"capturing step {step} as CUDA graphs failed ({error}); "
                    "set runtime.graphs=eager to run without them"
                ) from error
            recorded = self.recorder.stop()
            graphs[-1].capture_end()
        current.wait_stream(self._stream)
        self.captures += 1
        return _CudaVariant(graphs=graphs, recorded=recorded, output=output)

    # ------------------------------------------------------------------ emulation (CPU tests)
    def _emulate(self, key: VariantKey, step: int, phase: str, inputs: InputsT) -> torch.Tensor:
        recorded = self._emulated.get(key)
        if recorded is None:
            self.recorder.start(step)
            try:
                self._eager(inputs, phase)  # computes, but only the recording is kept
            finally:
                recorded = self.recorder.stop()
            self._emulated[key] = recorded
            self.captures += 1
        segment_index = 0

        def after_segment() -> None:
            nonlocal segment_index
            _check_segment(recorded, segment_index, self.recorder, step)
            recorded.after_segment(segment_index, step)
            segment_index += 1
            recorded.before_segment(segment_index, step)

        recorded.before_segment(segment_index, step)
        self.recorder.start(step, after_segment)
        try:
            output = self._eager(inputs, phase)
        finally:
            replayed = self.recorder.stop()
        if len(replayed.segments) != len(recorded.segments):
            raise GraphError(f"step {step}: replay has a different number of segments")
        recorded.after_segment(segment_index, step)
        self.replays += 1
        return output


def _check_segment(recorded: RecordedStep, index: int, recorder: StepRecorder, step: int) -> None:
    """The segment the layers just ended must be the recorded one."""
    done = recorder.last_finished()
    expected = recorded.segments[index]
    same = (
        [(a.exchange, a.offset) for a in done.posts]
        == [(a.exchange, a.offset) for a in expected.posts]
        and [(a.exchange, a.offset) for a in done.early_waits]
        == [(a.exchange, a.offset) for a in expected.early_waits]
        and (done.wait is not None and expected.wait is not None)
        and (
            (done.wait.exchange, done.wait.offset) == (expected.wait.exchange, expected.wait.offset)
        )
    )
    if not same:
        raise GraphError(f"step {step}: segment {index} differs from the recorded step")
