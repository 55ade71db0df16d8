"""The per-step NaN/Inf check, immediate on the CPU and one step late on a GPU."""

from __future__ import annotations

import pytest
import torch

from pcpp_mpi.engine.finite import FiniteWatch

CPU = torch.device("cpu")


class Found(Exception):
    pass


def report(step: int) -> None:
    raise Found(step)


def test_immediate_on_the_cpu() -> None:
    watch = FiniteWatch(CPU, report)
    watch.submit(0, torch.ones(2, 2))
    with pytest.raises(Found) as found:
        watch.submit(1, torch.tensor([1.0, float("nan")]))
    assert found.value.args == (1,)


def test_lagged_reads_the_previous_step_and_names_it() -> None:
    watch = FiniteWatch(CPU, report, lagged=True)
    watch.submit(0, torch.ones(3))
    watch.submit(1, torch.tensor([float("inf")]))  # not read yet: the GPU would still run
    with pytest.raises(Found) as found:
        watch.submit(2, torch.ones(3))
    assert found.value.args == (1,)


def test_lagged_finish_reads_the_last_steps() -> None:
    watch = FiniteWatch(CPU, report, lagged=True)
    for step in range(4):
        watch.submit(step, torch.ones(3))
    watch.finish()  # all finite: nothing reported
    watch.submit(4, torch.ones(3))
    watch.submit(5, torch.tensor([float("nan")]))
    with pytest.raises(Found) as found:
        watch.finish()
    assert found.value.args == (5,)
