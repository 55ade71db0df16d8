"""StepClock: which step kind each mode runs, and what it posts for the next step."""

from __future__ import annotations

import pytest

from pcpp_mpi.parallel.clock import StepClock

# -- StepClock -----------------------------------------------------------------------------------


def clock_kinds(mode: str, steps: int, warmup: int) -> list[str]:
    clock = StepClock(mode, steps, warmup)
    kinds = []
    for step in range(steps):
        clock.begin(step)
        assert clock.step == step
        kinds.append(clock.kind)
    return kinds


def test_clock_kinds_per_mode() -> None:
    assert clock_kinds("single", 4, 2) == ["local"] * 4
    assert clock_kinds("naive", 4, 2) == ["local"] * 4
    assert clock_kinds("sync", 4, 2) == ["sync"] * 4
    for mode in ("distrifusion", "pcpp"):
        assert clock_kinds(mode, 5, 2) == [
            "sync",
            "sync",
            "displaced",
            "displaced",
            "displaced_last",
        ]
        assert clock_kinds(mode, 3, 1) == ["sync", "displaced", "displaced_last"]
        assert clock_kinds(mode, 3, 3) == ["sync"] * 3
        assert clock_kinds(mode, 2, 1) == ["sync", "displaced_last"]


def test_clock_flags_and_previous_kind() -> None:
    clock = StepClock("pcpp", 4, 1)
    seen = []
    for step in range(4):
        clock.begin(step)
        seen.append((clock.previous_kind, clock.fresh, clock.displaced, clock.posts_for_next))
    assert seen == [
        (None, True, False, False),
        ("sync", False, True, True),
        ("displaced", False, True, True),
        ("displaced", False, True, False),  # last step: nothing posted for a next step
    ]


@pytest.mark.parametrize("mode", ["single", "naive", "sync", "distrifusion", "pcpp"])
def test_clock_posts_nothing_for_next_on_last_step(mode: str) -> None:
    clock = StepClock(mode, 3, 1)
    for step in range(3):
        clock.begin(step)
    assert clock.posts_for_next is False


def test_clock_out_of_order() -> None:
    clock = StepClock("sync", 4, 0)
    with pytest.raises(RuntimeError, match="follows"):
        clock.begin(1)  # must start at 0
    clock.begin(0)
    with pytest.raises(RuntimeError, match="follows"):
        clock.begin(0)  # repeated
    with pytest.raises(RuntimeError, match="follows"):
        clock.begin(2)  # skipped
    clock.begin(1)
    clock.reset()
    assert (clock.step, clock.kind, clock.previous_kind) == (-1, "local", None)
    clock.begin(0)


def test_clock_displaced_without_warmup_raises() -> None:
    # a displaced first step would read a previous step that never happened
    clock = StepClock("distrifusion", 4, 0)
    with pytest.raises(RuntimeError, match="previous step"):
        clock.begin(0)
