"""The record of a step's host actions that a CUDA-graph replay (or its CPU emulation) follows."""

from __future__ import annotations

import pytest

from pcpp_mpi.comm.capture import StepRecorder


class FakeExchange:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    def launch(self, step: int) -> None:
        self.log.append(f"launch {self.name} {step}")

    def complete(self, step: int) -> None:
        self.log.append(f"complete {self.name} {step}")


def test_waits_split_segments_and_steps_are_relative() -> None:
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
    recorded = recorder.stop()
    assert not recorder.recording
    assert boundaries == [0, 1]  # one new graph per wait
    assert len(recorded.segments) == 3
    assert recorded.describe() == [
        "post conv_in +0",
        "wait conv_in +0",
        "post norm +0",
        "wait norm -1",
        "post attn +0",
    ]
    for index in range(3):  # replayed at step 12: same offsets, new step numbers
        recorded.after_segment(index, 12)
    assert log == [
        "launch conv_in 12",
        "complete conv_in 12",
        "launch norm 12",
        "complete norm 11",
        "launch attn 12",
    ]


def test_last_finished_is_the_segment_a_wait_just_ended() -> None:
    recorder = StepRecorder()
    exchange = FakeExchange("halo", [])
    seen = []
    recorder.start(3, lambda: seen.append(recorder.last_finished()))
    recorder.note_post(exchange, 3)
    recorder.note_wait(exchange, 2)
    recorder.stop()
    assert [a.offset for a in seen[0].posts] == [0]
    assert seen[0].wait is not None and seen[0].wait.offset == -1


def test_recording_twice_is_refused() -> None:
    recorder = StepRecorder()
    recorder.start(0)
    with pytest.raises(RuntimeError, match="already recording"):
        recorder.start(1)
    recorder.stop()
    recorder.start(1)  # stop() ends the recording, also for a fresh start
    recorder.stop()
