"""The record of a step's host actions that a CUDA-graph replay (or its CPU emulation) follows."""

from __future__ import annotations

import pytest

from pcpp_mpi.comm.capture import StepRecorder


class FakeExchange:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    def launch(self, step: int, ready: object = None) -> None:
        self.log.append(f"launch {self.name} {step}")

    def complete(self, step: int) -> None:
        self.log.append(f"complete {self.name} {step}")


def test_fresh_waits_split_segments_and_steps_are_relative() -> None:
    log: list[str] = []
    boundaries: list[int] = []
    conv_in, norm, attn = (FakeExchange(n, log) for n in ("conv_in", "norm", "attn"))
    recorder = StepRecorder()
    assert not recorder.recording
    recorder.start(7, lambda: boundaries.append(len(boundaries)))
    assert recorder.recording
    recorder.note_post(conv_in, 7)  # fresh: post and wait for the same step
    recorder.note_wait(conv_in, 7)
    recorder.note_post(norm, 7)  # displaced: post for the next step, wait for the previous
    recorder.note_wait(norm, 6)
    recorder.note_post(attn, 7)
    recorder.note_wait(attn, 6)
    recorded = recorder.stop()
    assert not recorder.recording
    assert boundaries == [0]  # one new graph per fresh wait; waits for step 6 split nothing
    assert len(recorded.segments) == 2
    assert recorded.describe() == [
        "post conv_in +0",
        "wait conv_in +0",
        "early wait norm -1",
        "early wait attn -1",
        "post norm +0",
        "post attn +0",
    ]
    for index in range(2):  # replayed at step 12: same offsets, new step numbers
        recorded.before_segment(index, 12)
        log.append(f"segment {index}")
        recorded.after_segment(index, 12)
    assert log == [
        "segment 0",
        "launch conv_in 12",
        "complete norm 11",  # before the fresh wait that precedes the segment reading them
        "complete attn 11",
        "complete conv_in 12",
        "segment 1",
        "launch norm 12",
        "launch attn 12",
    ]


def test_early_waits_of_the_first_segment_come_before_it() -> None:
    log: list[str] = []
    norm, attn = FakeExchange("norm", log), FakeExchange("attn", log)
    recorder = StepRecorder()
    recorder.start(3)
    recorder.note_wait(norm, 2)  # read by the first (and only) segment
    recorder.note_post(attn, 3)
    recorded = recorder.stop()
    recorded.before_segment(0, 5)
    log.append("segment 0")
    recorded.after_segment(0, 5)
    assert log == ["complete norm 4", "segment 0", "launch attn 5"]


def test_posts_carry_the_event_recorded_where_their_data_is_ready() -> None:
    events = iter(["event-a", "event-b"])
    launched: list[tuple[str, int, object]] = []

    class EventExchange(FakeExchange):
        def launch(self, step: int, ready: object = None) -> None:
            launched.append((self.name, step, ready))

    recorder = StepRecorder()
    recorder.start(2, ready_event=lambda: next(events))
    recorder.note_post(EventExchange("a", []), 2)
    recorder.note_post(EventExchange("b", []), 2)
    recorded = recorder.stop()
    recorded.after_segment(0, 4)
    assert launched == [("a", 4, "event-a"), ("b", 4, "event-b")]
    recorder.start(2)  # without a factory: no event (start after everything queued)
    recorder.note_post(EventExchange("c", []), 2)
    assert recorder.stop().segments[0].posts[0].ready is None


def test_last_finished_is_the_segment_a_wait_just_ended() -> None:
    recorder = StepRecorder()
    exchange = FakeExchange("halo", [])
    seen = []
    recorder.start(3, lambda: seen.append(recorder.last_finished()))
    recorder.note_post(exchange, 3)
    recorder.note_wait(exchange, 2)  # an early wait: no segment ends
    assert seen == []
    recorder.note_wait(exchange, 3)
    recorder.stop()
    assert [a.offset for a in seen[0].posts] == [0]
    assert [a.offset for a in seen[0].early_waits] == [-1]
    assert seen[0].wait is not None and seen[0].wait.offset == 0


def test_recording_twice_is_refused() -> None:
    recorder = StepRecorder()
    recorder.start(0)
    with pytest.raises(RuntimeError, match="already recording"):
        recorder.start(1)
    recorder.stop()
    recorder.start(1)  # stop() ends the recording, also for a fresh start
    recorder.stop()
