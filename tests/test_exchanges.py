"""Exchange life cycles on MPI.COMM_SELF, the traffic counter and the rank topology."""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest
import torch

from pcpp_mpi.comm.capture import StepRecorder
from pcpp_mpi.comm.deferred import DeferredStarts
from pcpp_mpi.comm.exchanges import (
    AllBandsExchange,
    ExchangeError,
    NeighbourExchange,
    StatsAllreduce,
    WireSpec,
    mpi_buffer,
)
from pcpp_mpi.comm.frames import TokenFrames
from pcpp_mpi.comm.step_stats import StepStatsAllreduce
from pcpp_mpi.comm.traffic import TrafficCounter
from pcpp_mpi.plan.topology import Topology
from pcpp_mpi.trace.recorder import Tracer

CPU = torch.device("cpu")
WIRE = WireSpec(compute_device=CPU, wire_device=CPU, dtype=torch.float32)


@pytest.fixture(scope="module")
def mpi() -> ModuleType:
    """mpi4py.MPI, initialised (as a singleton when not launched by mpirun)."""
    from mpi4py import MPI

    return MPI


def edge_exchange(mpi: ModuleType, counter: TrafficCounter | None = None) -> NeighbourExchange:
    """A lone band: no neighbour above or below, so nothing travels, but the life cycle holds."""
    return NeighbourExchange(
        name="conv",
        kind="halo",
        comm=mpi.COMM_SELF,
        up=None,
        down=None,
        tag=3,
        send_shapes=(None, None),
        recv_shapes=(None, None),
        wire=WIRE,
        counter=counter or TrafficCounter(),
        tracer=Tracer(enabled=False),
        deferred=DeferredStarts(),
        recorder=StepRecorder(),
    )


# -- NeighbourExchange life cycle ----------------------------------------------------------------


def test_neighbour_wait_without_post_raises(mpi: ModuleType) -> None:
    exchange = edge_exchange(mpi)
    with pytest.raises(ExchangeError, match="never posted"):
        exchange.wait(0)
    exchange.post(0, None, None)
    with pytest.raises(ExchangeError, match="never posted"):
        exchange.wait(1)
    with pytest.raises(ExchangeError, match="never posted"):
        exchange.wait(2)  # same parity as 0, but another step


def test_neighbour_post_twice_raises(mpi: ModuleType) -> None:
    exchange = edge_exchange(mpi)
    exchange.post(0, None, None)
    with pytest.raises(ExchangeError, match="pending"):
        exchange.post(0, None, None)  # still pending
    assert exchange.wait(0) == (None, None)
    with pytest.raises(ExchangeError, match="twice"):
        exchange.post(0, None, None)  # completed, but the same step again


def test_neighbour_post_over_pending_set_raises(mpi: ModuleType) -> None:
    exchange = edge_exchange(mpi)
    exchange.post(4, None, None)
    exchange.post(5, None, None)  # the other set: fine
    with pytest.raises(ExchangeError, match="step 6 posted while step 4 is still pending"):
        exchange.post(6, None, None)
    exchange.wait(4)
    exchange.post(6, None, None)  # the set is free again
    with pytest.raises(ExchangeError, match="step 7 posted while step 5"):
        exchange.post(7, None, None)


def test_neighbour_sets_are_reused(mpi: ModuleType) -> None:
    exchange = edge_exchange(mpi)
    for step in range(6):
        exchange.post(step, None, None)
        if step > 0:
            exchange.wait(step - 1)  # displaced: read the previous step while this one flies
        assert exchange.wait(step) == (None, None)
        exchange.wait(step)  # waiting again for a completed step is harmless
    with pytest.raises(ExchangeError, match="never posted"):
        exchange.wait(3)  # overwritten by step 5


def test_neighbour_reset(mpi: ModuleType) -> None:
    exchange = edge_exchange(mpi)
    exchange.post(0, None, None)
    with pytest.raises(ExchangeError, match="still pending"):
        exchange.reset()
    exchange.wait(0)
    exchange.reset()
    with pytest.raises(ExchangeError, match="never posted"):
        exchange.wait(0)  # forgotten
    exchange.post(0, None, None)  # a new image starts at step 0 again
    exchange.wait(0)


def both_sides_self(mpi: ModuleType, tag: int, counter: TrafficCounter) -> NeighbourExchange:
    """COMM_SELF rank 0 as the band above and the band below: one row up, two rows down."""
    return NeighbourExchange(
        name="rows",
        kind="kv",
        comm=mpi.COMM_SELF,
        up=0,
        down=0,
        tag=tag,
        send_shapes=((1, 2, 1, 3), (1, 2, 2, 3)),
        recv_shapes=((1, 2, 1, 3), (1, 2, 2, 3)),
        wire=WIRE,
        counter=counter,
        tracer=Tracer(enabled=False),
        deferred=DeferredStarts(),
        recorder=StepRecorder(),
    )


def test_neighbour_exchange_to_itself(mpi: ModuleType) -> None:
    """COMM_SELF rank 0 as both neighbours: what goes up comes back from up, what goes down
    comes back from down (messages on one tag keep their order), and the bytes are counted."""
    counter = TrafficCounter()
    exchange = both_sides_self(mpi, tag=5, counter=counter)
    for step in range(3):
        to_up = torch.randn(1, 2, 1, 3)
        to_down = torch.randn(1, 2, 2, 3)
        expected_up = to_up.clone()
        exchange.post(step, to_up, to_down)
        to_up.zero_()  # the exchange copied the data when posting
        from_up, from_down = exchange.wait(step)
        assert from_up is not None and from_down is not None
        assert torch.equal(from_up, expected_up)
        assert torch.equal(from_down, to_down)
    sent, received = counter.step_totals(0, 2)
    assert sent == {"kv": (6 + 12) * 4} and received == {"kv": (6 + 12) * 4}


def test_neighbour_exchange_missing_data_raises(mpi: ModuleType) -> None:
    exchange = NeighbourExchange(
        name="rows",
        kind="halo",
        comm=mpi.COMM_SELF,
        up=None,
        down=0,
        tag=6,
        send_shapes=(None, (1, 1, 1, 2)),
        recv_shapes=(None, (1, 1, 1, 2)),
        wire=WIRE,
        counter=TrafficCounter(),
        tracer=Tracer(enabled=False),
        deferred=DeferredStarts(),
        recorder=StepRecorder(),
    )
    with pytest.raises(ExchangeError, match="no data"):
        exchange.post(0, None, None)


# -- AllBandsExchange ----------------------------------------------------------------------------


def test_all_bands_exchange_one_band(mpi: ModuleType) -> None:
    counter = TrafficCounter()
    exchange = AllBandsExchange(
        name="attn",
        kind="kv",
        comm=mpi.COMM_SELF,
        tag=7,
        shapes=[(2, 12, 16)],
        wire=WIRE,
        counter=counter,
        tracer=Tracer(enabled=False),
        deferred=DeferredStarts(),
        recorder=StepRecorder(),
    )
    for step in range(4):
        exchange.post(step, torch.randn(2, 12, 16))
        if step:
            assert exchange.wait(step - 1) == [None]
        assert exchange.wait(step) == [None]  # own index: None; there is no other band
    assert counter.as_rows() == []  # nothing sent to or received from anybody
    with pytest.raises(ExchangeError, match="never posted"):
        exchange.wait(7)
    exchange.post(4, torch.zeros(2, 12, 16))
    with pytest.raises(ExchangeError, match="pending"):
        exchange.reset()
    exchange.wait(4)
    exchange.reset()
    exchange.post(0, torch.zeros(2, 12, 16))
    with pytest.raises(ExchangeError, match="pending"):
        exchange.post(2, torch.zeros(2, 12, 16))


# -- StatsAllreduce ------------------------------------------------------------------------------


def test_stats_allreduce_self(mpi: ModuleType) -> None:
    counter = TrafficCounter()
    stats = StatsAllreduce(
        name="norm",
        kind="norm",
        comm=mpi.COMM_SELF,
        shape=(3, 2, 4),
        wire=WIRE,
        counter=counter,
        tracer=Tracer(enabled=False),
        deferred=DeferredStarts(),
        recorder=StepRecorder(),
    )
    locals_ = [torch.randn(3, 2, 4, dtype=torch.float64) for _ in range(3)]
    for step, local in enumerate(locals_):
        stats.post(step, local)
        total = stats.wait(step)
        assert total.dtype == torch.float64
        assert torch.equal(total, local)  # one rank: the sum is its own contribution
        assert torch.equal(stats.posted(step), local)
    # the previous step's contribution is still there for the displaced correction
    assert torch.equal(stats.posted(1), locals_[1])
    others = stats.wait_others(1)  # one rank: no other band contributes
    assert others.dtype == torch.float64 and torch.equal(others, torch.zeros_like(others))
    with pytest.raises(ExchangeError, match="never posted"):
        stats.posted(0)  # overwritten by step 2
    with pytest.raises(ExchangeError, match="never posted"):
        stats.wait(5)
    # 3 x 2 x 4 float64 = 192 bytes, each way, per step
    assert counter.as_rows() == [(0, s, "norm", 192, 192) for s in range(3)]


# -- mpi_buffer ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype,itemsize",
    [(torch.float16, 2), (torch.bfloat16, 2), (torch.float32, 4), (torch.float64, 8)],
)
def test_mpi_buffer_bytes(mpi: ModuleType, dtype: torch.dtype, itemsize: int) -> None:
    tensor = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4).to(dtype)
    buffer, datatype = mpi_buffer(tensor)
    assert datatype == mpi.BYTE
    assert isinstance(buffer, np.ndarray) and buffer.dtype == np.uint8
    assert buffer.size == 24 * itemsize == tensor.nbytes
    # a view, not a copy: writing the bytes changes the tensor
    buffer[:] = 0
    assert torch.count_nonzero(tensor) == 0


def test_mpi_buffer_round_trip_half(mpi: ModuleType) -> None:
    """A bfloat16 tensor sent as bytes arrives bit for bit."""
    source = torch.randn(3, 5).to(torch.bfloat16)
    target = torch.empty_like(source)
    request = mpi.COMM_SELF.Irecv(mpi_buffer(target), source=0, tag=11)
    mpi.COMM_SELF.Send(mpi_buffer(source), dest=0, tag=11)
    request.Wait()
    assert torch.equal(target, source)


def test_mpi_buffer_non_contiguous_raises() -> None:
    tensor = torch.zeros(4, 6, dtype=torch.float16)
    with pytest.raises(ExchangeError, match="contiguous"):
        mpi_buffer(tensor.t())
    with pytest.raises(ExchangeError, match="contiguous"):
        mpi_buffer(tensor[:, ::2])
    assert mpi_buffer(tensor[1:3])[0].size == 2 * 6 * 2  # a contiguous slice is fine


# -- WireSpec ------------------------------------------------------------------------------------


def test_wire_spec_on_the_cpu() -> None:
    assert not WIRE.staged
    buffer = WIRE.empty((2, 3))
    assert buffer.shape == (2, 3) and buffer.dtype == torch.float32 and buffer.device == CPU
    assert WIRE.to_compute(buffer) is buffer


# -- TrafficCounter ------------------------------------------------------------------------------


def test_traffic_counter() -> None:
    counter = TrafficCounter()
    counter.add(0, "halo", sent=100, received=50)
    counter.add(0, "halo", sent=10)
    counter.add(0, "norm", sent=96, received=96)
    counter.add(1, "kv", received=7)
    counter.add(1, "kv")  # nothing: no entry
    counter.begin_image(1)
    counter.add(0, "halo", sent=5, received=5)
    assert counter.step_totals(0, 0) == (
        {"halo": 110, "norm": 96},
        {"halo": 50, "norm": 96},
    )
    assert counter.step_totals(0, 1) == ({}, {"kv": 7})
    assert counter.step_totals(1, 0) == ({"halo": 5}, {"halo": 5})
    assert counter.step_totals(2, 0) == ({}, {})
    assert counter.as_rows() == [
        (0, 0, "halo", 110, 50),
        (0, 0, "norm", 96, 96),
        (0, 1, "kv", 0, 7),
        (1, 0, "halo", 5, 5),
    ]


# -- Topology ------------------------------------------------------------------------------------


def test_topology_bands_only() -> None:
    layout = [Topology(3, rank, 1) for rank in range(3)]
    assert [t.n_bands for t in layout] == [3, 3, 3]
    assert [t.band_index for t in layout] == [0, 1, 2]
    assert [t.cfg_index for t in layout] == [0, 0, 0]
    assert [t.cfg_partner for t in layout] == [None, None, None]
    assert [t.is_output_rank for t in layout] == [True, False, False]


def test_topology_cfg_groups() -> None:
    # 6 ranks = 2 CFG groups x 3 bands: ranks 0-2 unconditional, 3-5 conditional
    layout = [Topology(6, rank, 2) for rank in range(6)]
    assert [t.n_bands for t in layout] == [3] * 6
    assert [t.band_index for t in layout] == [0, 1, 2, 0, 1, 2]
    assert [t.cfg_index for t in layout] == [0, 0, 0, 1, 1, 1]
    assert [t.cfg_partner for t in layout] == [3, 4, 5, 0, 1, 2]
    assert [t.is_output_rank for t in layout] == [True] + [False] * 5
    two = [Topology(2, rank, 2) for rank in range(2)]
    assert [(t.band_index, t.cfg_index, t.cfg_partner) for t in two] == [(0, 0, 1), (0, 1, 0)]


@pytest.mark.parametrize(
    "size,rank,groups,message",
    [
        (3, 0, 2, "even rank count"),
        (5, 4, 2, "even rank count"),
        (4, 0, 3, "cfg_groups must be 1 or 2"),
        (4, 0, 0, "cfg_groups must be 1 or 2"),
        (4, 4, 1, "outside"),
        (4, -1, 2, "outside"),
    ],
)
def test_topology_rejects(size: int, rank: int, groups: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Topology(size, rank, groups)


# -- DeferredStarts ------------------------------------------------------------------------------


class FakeEvent:
    """Stands in for a CUDA event: not done until the test says so."""

    def __init__(self) -> None:
        self.done = False
        self.waited = False

    def query(self) -> bool:
        return self.done

    def synchronize(self) -> None:
        self.waited = True
        self.done = True


def test_deferred_starts_run_in_order_once_ready() -> None:
    started: list[str] = []
    deferred = DeferredStarts()
    first, second = FakeEvent(), FakeEvent()
    deferred.submit(first, lambda: started.append("a"))
    deferred.submit(second, lambda: started.append("b"))
    deferred.submit(None, lambda: started.append("c"))  # no event, but after a and b
    assert started == [] and len(deferred) == 3
    second.done = True
    deferred.progress()
    assert started == []  # b may not overtake a: MPI matching follows posting order
    first.done = True
    deferred.progress()
    assert started == ["a", "b", "c"] and len(deferred) == 0


def test_deferred_flush_waits_for_events() -> None:
    started: list[int] = []
    deferred = DeferredStarts()
    events = [FakeEvent() for _ in range(3)]
    for index, event in enumerate(events):
        deferred.submit(event, lambda index=index: started.append(index))
    deferred.flush()
    assert started == [0, 1, 2]
    assert all(event.waited for event in events)


def test_starts_waiting_for_a_graphs_events_run_before_it_is_replayed_again() -> None:
    """A replay re-records its graph's events: starts still waiting for the previous record of
    one of them (and everything queued before them) must run first; later ones stay queued."""
    started: list[int] = []
    deferred = DeferredStarts()
    events = [FakeEvent() for _ in range(4)]
    for index, event in enumerate(events):
        deferred.submit(event, lambda index=index: started.append(index))
    deferred.start_all_using([events[1]])
    assert started == [0, 1] and events[0].waited and events[1].waited
    assert len(deferred) == 2 and not events[3].waited
    deferred.start_all_using([FakeEvent()])  # none of its events queued: nothing runs
    assert started == [0, 1]


def test_cpu_starts_run_at_once() -> None:
    started: list[int] = []
    deferred = DeferredStarts()
    deferred.submit(None, lambda: started.append(1))
    assert started == [1] and len(deferred) == 0


def test_drain_completes_a_pending_set(mpi: ModuleType) -> None:
    """A run stopped between post and wait: drain completes the set, then reset works."""
    exchange = edge_exchange(mpi)
    exchange.post(0, None, None)
    with pytest.raises(ExchangeError, match="pending"):
        exchange.reset()
    exchange.drain()
    exchange.reset()
    exchange.post(0, None, None)  # the set is usable again


class SlowEvent:
    """A GPU event that completes after ``polls`` queries and must never be waited for."""

    def __init__(self, polls: int) -> None:
        self.polls = polls

    def query(self) -> bool:
        self.polls -= 1
        return self.polls <= 0

    def synchronize(self) -> None:
        raise AssertionError("a wait blocked on the GPU instead of polling its events")


def self_exchange(mpi: ModuleType, deferred: DeferredStarts, recorder: StepRecorder, counter=None):
    return NeighbourExchange(
        name="rows",
        kind="halo",
        comm=mpi.COMM_SELF,
        up=0,
        down=None,
        tag=9,
        send_shapes=((1, 2, 1, 3), None),
        recv_shapes=((1, 2, 1, 3), None),
        wire=WIRE,
        counter=counter or TrafficCounter(),
        tracer=Tracer(enabled=False),
        deferred=deferred,
        recorder=recorder,
    )


def test_wait_polls_pending_starts_instead_of_blocking_on_the_gpu(mpi: ModuleType) -> None:
    """A wait whose own start is queued behind a start still waiting for its GPU event keeps
    polling the events (the GPU keeps its queue) and completes once they are ready."""
    deferred = DeferredStarts()
    exchange = self_exchange(mpi, deferred, StepRecorder())
    earlier: list[str] = []
    deferred.submit(SlowEvent(polls=3), lambda: earlier.append("started"))
    data = torch.randn(1, 2, 1, 3)
    exchange.post(0, data, None)  # queued behind the slow start (starts keep their order)
    assert len(deferred) == 2
    from_up, _ = exchange.wait(0)
    assert earlier == ["started"] and len(deferred) == 0
    assert from_up is not None and torch.equal(from_up, data)


def test_recorded_post_and_wait_leave_mpi_to_launch_and_complete(mpi: ModuleType) -> None:
    """While a step is recorded (captured as a graph), post only fills the send set of the
    step's parity and wait only hands out the receive set; launch/complete, run later by the
    replay, do the MPI part with the step numbers of the replayed step."""
    counter = TrafficCounter()
    recorder = StepRecorder()
    exchange = self_exchange(mpi, DeferredStarts(), recorder, counter)
    data = torch.randn(1, 2, 1, 3)
    recorder.start(4)
    exchange.post(4, data, None)
    buffers = exchange.wait(4)
    recorded = recorder.stop()
    assert recorded.describe() == ["post rows +0", "wait rows +0"]
    assert counter.drain() == []  # nothing reached MPI or the byte counts
    receive_set = buffers[0]
    assert receive_set is not None
    recorded.after_segment(0, 6)  # replayed at step 6: same parity, MPI for step 6
    assert torch.equal(receive_set, data)
    assert [(row[1], row[2]) for row in counter.drain()] == [(6, "halo")]
    with pytest.raises(ExchangeError, match="never posted"):
        exchange.complete(8)


# -- host-staged buffers -------------------------------------------------------------------------


def test_frames_are_none_for_host_staged_buffers(mpi: ModuleType) -> None:
    """Buffers in host memory while the compute device is another one: layers cannot read
    frames in place (callers copy their data in with ``post``)."""
    staged = WireSpec(compute_device=torch.device("meta"), wire_device=CPU, dtype=torch.float32)
    common = dict(
        comm=mpi.COMM_SELF,
        counter=TrafficCounter(),
        tracer=Tracer(enabled=False),
        deferred=DeferredStarts(),
        recorder=StepRecorder(),
        wire=staged,
    )
    rows = NeighbourExchange(
        name="rows", kind="halo", up=0, down=None, tag=12,
        send_shapes=((1, 1, 1, 2), None), recv_shapes=((1, 1, 1, 2), None), **common,
    )  # fmt: skip
    frames = TokenFrames(staged, batch=1, channels=2, band_tokens=[4])
    blocks = AllBandsExchange(
        name="kv", kind="kv", tag=13, shapes=[(1, 4, 2)], frames=frames, **common
    )
    assert rows.frame(0) is None and blocks.frame(0) is None


# -- token frames --------------------------------------------------------------------------------


def test_token_frames_views() -> None:
    """Layers see ``(B, n, C)`` views of the token-major frames MPI reads and writes."""
    frames = TokenFrames(WIRE, batch=2, channels=5, band_tokens=[3, 4, 2])
    assert frames.starts == (0, 3, 7, 9) and frames.band(1) == (3, 7)
    wire = frames.wire_tokens(1, 3, 7)
    assert wire.shape == (4, 2, 5) and wire.is_contiguous()
    view = frames.tokens(1, 3, 7)
    assert view.shape == (2, 4, 5) and view.data_ptr() == wire.data_ptr()
    view.copy_(torch.arange(40.0).view(2, 4, 5))
    assert torch.equal(wire[2, 1], torch.arange(30.0, 35.0))  # token 2 of batch 1
    assert frames.tokens(0, 3, 7).data_ptr() != wire.data_ptr()  # the other parity
    with pytest.raises(ValueError, match="outside"):
        frames.tokens(0, 5, 10)
    with pytest.raises(ValueError, match="bad frame"):
        TokenFrames(WIRE, batch=2, channels=5, band_tokens=[3, 0])


def framed_rows(mpi: ModuleType, frames: TokenFrames, counter: TrafficCounter) -> NeighbourExchange:
    """COMM_SELF rank 0 as both neighbours of band 1 of ``frames``: two tokens go up (and come
    back from up), one goes down."""
    shape = (frames.batch, 2, frames.channels), (frames.batch, 1, frames.channels)
    return NeighbourExchange(
        name="rows", kind="kv", comm=mpi.COMM_SELF, up=0, down=0, tag=15,
        send_shapes=shape, recv_shapes=shape, wire=WIRE, counter=counter,
        tracer=Tracer(enabled=False), deferred=DeferredStarts(), recorder=StepRecorder(),
        frames=frames, frame_band=1,
    )  # fmt: skip


def test_neighbour_exchange_in_frames(mpi: ModuleType) -> None:
    """Rows sent from step t's frame arrive in the context step t + 1 reads in place: the
    band's first tokens went up and came back as the rows above it, its last ones as the rows
    below; only the messages' bytes travel."""
    counter = TrafficCounter()
    frames = TokenFrames(WIRE, batch=2, channels=5, band_tokens=[3, 4, 2])
    exchange = framed_rows(mpi, frames, counter)
    sent: list[torch.Tensor] = []
    for step in range(4):
        placed = exchange.frame(step)
        assert placed is not None
        context, own = placed
        assert context.shape == (2, 2 + 4 + 1, 5) and own.shape == (2, 4, 5)
        if step:  # what step - 1 received, in place around this band's tokens
            assert torch.equal(context[:, :2], sent[-1][:, :2])
            assert torch.equal(context[:, -1:], sent[-1][:, -1:])
        own.copy_(torch.randn(2, 4, 5))
        assert torch.equal(context[:, 2:6], own)
        sent.append(own.clone())
        exchange.post_filled(step)
        with pytest.raises(ExchangeError, match="still pending"):
            exchange.frame(step + 2)
        from_up, from_down = exchange.wait(step)
        assert from_up is not None and from_down is not None
        assert torch.equal(from_up, sent[-1][:, :2]) and torch.equal(from_down, sent[-1][:, -1:])
    per_step = (2 + 1) * 2 * 5 * 4  # tokens x batch x channels x float32
    assert counter.step_totals(0, 3) == ({"kv": per_step}, {"kv": per_step})


def test_neighbour_post_copies_into_frames(mpi: ModuleType) -> None:
    """``post`` with data works on framed buffers too (the step after a sync step)."""
    frames = TokenFrames(WIRE, batch=1, channels=3, band_tokens=[2, 3, 1])
    exchange = framed_rows(mpi, frames, TrafficCounter())
    to_up, to_down = torch.randn(1, 2, 3), torch.randn(1, 1, 3)
    exchange.post(0, to_up, to_down)
    from_up, from_down = exchange.wait(0)
    assert from_up is not None and from_down is not None
    assert torch.equal(from_up, to_up) and torch.equal(from_down, to_down)
    placed = exchange.frame(1)
    assert placed is not None
    assert torch.equal(placed[0][:, :2], to_up) and torch.equal(placed[0][:, -1:], to_down)


def test_frames_reject_messages_that_do_not_fit(mpi: ModuleType) -> None:
    frames = TokenFrames(WIRE, batch=2, channels=5, band_tokens=[3, 4])
    common = dict(
        comm=mpi.COMM_SELF, wire=WIRE, counter=TrafficCounter(), tracer=Tracer(enabled=False),
        deferred=DeferredStarts(), recorder=StepRecorder(), frames=frames,
    )  # fmt: skip
    with pytest.raises(ValueError, match="does not fit"):
        NeighbourExchange(
            name="rows", kind="kv", up=0, down=None, tag=16, send_shapes=((2, 1, 4), None),
            recv_shapes=((2, 1, 5), None), frame_band=1, **common,
        )  # fmt: skip
    with pytest.raises(ValueError, match="do not match"):
        AllBandsExchange(name="kv", kind="kv", tag=17, shapes=[(2, 3, 5), (2, 3, 5)], **common)


def test_all_bands_frame_and_recorded_post_filled(mpi: ModuleType) -> None:
    recorder = StepRecorder()
    exchange = AllBandsExchange(
        name="attn",
        kind="kv",
        comm=mpi.COMM_SELF,
        tag=14,
        shapes=[(2, 3, 4)],
        wire=WIRE,
        counter=TrafficCounter(),
        tracer=Tracer(enabled=False),
        deferred=DeferredStarts(),
        recorder=recorder,
        frames=TokenFrames(WIRE, batch=2, channels=4, band_tokens=[3]),
    )
    placed = exchange.frame(0)
    assert placed is not None
    context, own = placed
    assert context.shape == own.shape == (2, 3, 4) and context.data_ptr() == own.data_ptr()
    exchange.post_filled(0)
    with pytest.raises(ExchangeError, match="still pending"):
        exchange.frame(2)
    assert exchange.wait(0) == [None]
    recorder.start(1)
    assert exchange.frame(1) is not None
    exchange.post_filled(1)
    assert recorder.stop().describe() == ["post attn +0"]


def test_all_bands_fresh_frame_needs_both_sets_free(mpi: ModuleType) -> None:
    """A sync step sends its block from frame t and reads the context from frame t + 1, whose
    own block is the send buffer of step t + 1: both sets must have completed."""
    exchange = AllBandsExchange(
        name="attn", kind="kv", comm=mpi.COMM_SELF, tag=18, shapes=[(1, 2, 3)], wire=WIRE,
        counter=TrafficCounter(), tracer=Tracer(enabled=False), deferred=DeferredStarts(),
        recorder=StepRecorder(), frames=TokenFrames(WIRE, batch=1, channels=3, band_tokens=[2]),
    )  # fmt: skip
    placed = exchange.fresh_frame(0)
    assert placed is not None
    context, send, own = placed
    assert context.shape == send.shape == own.shape == (1, 2, 3)
    assert context.data_ptr() == own.data_ptr() != send.data_ptr()
    send.copy_(torch.randn(1, 2, 3))
    exchange.post_filled(0)
    with pytest.raises(ExchangeError, match="still pending"):
        exchange.fresh_frame(1)  # its context frame holds the send buffer of step 0
    exchange.wait(0)
    assert exchange.fresh_frame(1) is not None


# -- StepStatsAllreduce --------------------------------------------------------------------------


def step_stats(mpi: ModuleType, recorder: StepRecorder | None = None) -> StepStatsAllreduce:
    """Two norms' statistics, (3, 2, 4) and (3, 2, 2), of a lone band (COMM_SELF)."""
    return StepStatsAllreduce(
        name="norms", kind="norm", comm=mpi.COMM_SELF, shapes=[(3, 2, 4), (3, 2, 2)],
        wire=WIRE, counter=TrafficCounter(), tracer=Tracer(enabled=False),
        deferred=DeferredStarts(), recorder=recorder or StepRecorder(),
    )  # fmt: skip


def test_step_stats_post_after_the_last_norm(mpi: ModuleType) -> None:
    """The statistics go out once every norm has written its share; the next step's first read
    completes the all-reduce and every norm reads its own slot (a lone band: the others' sums
    are the group's minus its own, zero)."""
    exchange = step_stats(mpi)
    assert exchange.norms == 2
    first, second = exchange.local(1, 0), exchange.local(1, 1)
    assert first.shape == (3, 2, 4) and second.shape == (3, 2, 2)
    first.fill_(2.0)
    exchange.contributed(1)
    with pytest.raises(ExchangeError, match="never posted"):
        exchange.others(1, 0)  # one of two norms wrote: nothing was posted yet
    exchange.reset()
    exchange.local(1, 0).fill_(2.0)
    exchange.contributed(1)
    exchange.local(1, 1).fill_(3.0)
    exchange.contributed(1)
    with pytest.raises(ExchangeError, match="still pending"):
        exchange.local(3, 0)  # the set of step 1 is in flight
    assert torch.equal(exchange.others(1, 0), torch.zeros(3, 2, 4))
    assert torch.equal(exchange.others(1, 1), torch.zeros(3, 2, 2))
    exchange.local(3, 0)  # completed by the read: free again


def test_step_stats_sum_what_was_sent(mpi: ModuleType) -> None:
    """The group-wide sum of a lone band is what it sent, slot by slot."""
    exchange = step_stats(mpi)
    sent = [torch.randn(3, 2, 4, dtype=torch.float64), torch.randn(3, 2, 2, dtype=torch.float64)]
    for index, values in enumerate(sent):
        exchange.local(0, index).copy_(values)
        exchange.contributed(0)
    total = exchange._allreduce.wait(0)  # the whole vector's all-reduce, slot after slot
    assert torch.equal(total[:24].view(3, 2, 4), sent[0])
    assert torch.equal(total[24:].view(3, 2, 2), sent[1])


def test_step_stats_interleaved_steps_raise(mpi: ModuleType) -> None:
    exchange = step_stats(mpi)
    exchange.local(0, 0)
    exchange.contributed(0)
    with pytest.raises(ExchangeError, match="1 of 2 norms"):
        exchange.contributed(2)


def test_step_stats_recorded_post_and_read(mpi: ModuleType) -> None:
    """While a step is captured the post (after the last norm) and the read of the previous
    step are recorded for the replay, not done."""
    recorder = StepRecorder()
    exchange = step_stats(mpi, recorder)
    recorder.start(5)
    for index in range(2):
        exchange.local(5, index)
        exchange.contributed(5)
        exchange.others(4, index)
    assert recorder.stop().describe() == ["early wait norms -1", "post norms +0"]
