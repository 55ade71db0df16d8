"""``runtime.nvtx``: the range helper with a fake push/pop pair, the ranges the tracer and the
exchanges mark, the switch (off by default, validated) and a CPU run with it on (no-op)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mpi_launch import REPO

import pcpp_mpi
from pcpp_mpi.comm.capture import StepRecorder
from pcpp_mpi.comm.deferred import DeferredStarts
from pcpp_mpi.comm.exchanges import NeighbourExchange, WireSpec
from pcpp_mpi.comm.traffic import TrafficCounter
from pcpp_mpi.config import ConfigError, JobConfig, job_from_dict
from pcpp_mpi.engine.nvtx import nvtx_ranges
from pcpp_mpi.trace.ranges import Ranges
from pcpp_mpi.trace.recorder import Tracer

CPU = torch.device("cpu")


class FakeMarks:
    """A push/pop pair that writes down what it is asked (``+name`` and ``-``)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def push(self, name: str) -> None:
        self.calls.append(f"+{name}")

    def pop(self) -> None:
        self.calls.append("-")

    def ranges(self) -> Ranges:
        return Ranges(self.push, self.pop)


# -- the range helper ----------------------------------------------------------------------------


def test_ranges_nest_and_count_their_depth() -> None:
    marks = FakeMarks()
    ranges = marks.ranges()
    assert ranges.enabled
    with ranges.range("outer"):
        ranges.push("inner")
        assert ranges.depth == 2
        ranges.pop()
    assert ranges.depth == 0
    assert marks.calls == ["+outer", "+inner", "-", "-"]


def test_a_range_closes_what_an_exception_left_open() -> None:
    """A step cut short by an exception leaves its ranges open: the enclosing ``range`` closes
    them with its own, and a pop with nothing open does nothing."""
    marks = FakeMarks()
    ranges = marks.ranges()
    with pytest.raises(RuntimeError), ranges.range("denoise"):
        ranges.push("step 3")
        ranges.push("wait conv")
        raise RuntimeError("a rank failed")
    assert ranges.depth == 0
    ranges.pop()
    assert marks.calls == ["+denoise", "+step 3", "+wait conv", "-", "-", "-"]


def test_ranges_without_functions_do_nothing() -> None:
    ranges = Ranges()
    assert not ranges.enabled
    with ranges.range("denoise"):
        ranges.push("step 0")
        ranges.pop()
        ranges.pop()
    assert ranges.depth == 0
    with pytest.raises(ValueError, match="both"):
        Ranges(print, None)


def test_nvtx_ranges_are_off_unless_enabled_on_a_gpu() -> None:
    assert not nvtx_ranges(False, CPU).enabled
    assert not nvtx_ranges(True, CPU).enabled  # no NVTX on the CPU: no-op
    assert not nvtx_ranges(False, torch.device("cuda", 0)).enabled
    if torch.cuda.is_available():
        assert nvtx_ranges(True, torch.device("cuda", 0)).enabled


# -- what the tracer and the exchanges mark ------------------------------------------------------


def test_tracer_marks_phases_and_steps_whether_or_not_it_records() -> None:
    for enabled in (True, False):
        marks = FakeMarks()
        tracer = Tracer(enabled=enabled, ranges=marks.ranges())
        with tracer.phase("setup"), tracer.phase("denoise", 1):
            tracer.begin_step(1, 0, "sync")
            tracer.end_step()
        assert marks.calls == [
            "+setup", "+denoise image 1", "+image 1 step 0 sync", "-", "-", "-",
        ]  # fmt: skip
        assert len(tracer.take_finished()[2]) == (2 if enabled else 0)


def test_exchange_waits_are_marked(mpi_self: object) -> None:
    """COMM_SELF as both neighbours: each wait that completes a step is one ``wait NAME``
    range; a second wait for the same step (already complete) marks nothing."""
    marks = FakeMarks()
    exchange = NeighbourExchange(
        name="down.conv", kind="halo", comm=mpi_self, up=0, down=0, tag=3,
        send_shapes=((1, 1, 1, 2), (1, 1, 1, 2)), recv_shapes=((1, 1, 1, 2), (1, 1, 1, 2)),
        wire=WireSpec(CPU, CPU, torch.float32), counter=TrafficCounter(),
        tracer=Tracer(ranges=marks.ranges()), deferred=DeferredStarts(), recorder=StepRecorder(),
    )  # fmt: skip
    rows = torch.ones(1, 1, 1, 2)
    exchange.post(0, rows, rows)
    exchange.wait(0)
    exchange.wait(0)
    assert marks.calls == ["+wait down.conv", "-"]


@pytest.fixture(scope="module")
def mpi_self() -> object:
    """``MPI.COMM_SELF`` (MPI initialised as a singleton when not launched by mpirun)."""
    from mpi4py import MPI

    return MPI.COMM_SELF


# -- the switch ----------------------------------------------------------------------------------


def test_nvtx_is_off_by_default_and_validated() -> None:
    assert JobConfig().runtime.nvtx is False
    assert job_from_dict({}).runtime.nvtx is False
    assert job_from_dict({"runtime": {"nvtx": True}}).runtime.nvtx is True
    assert job_from_dict({}, ["runtime.nvtx=true"]).runtime.nvtx is True
    with pytest.raises(ConfigError, match=r"runtime\.nvtx"):
        job_from_dict({"runtime": {"nvtx": "yes"}})


def test_a_cpu_run_with_nvtx_on_completes(tmp_path: Path) -> None:
    """On the CPU the switch changes nothing: the run completes with the same latent."""
    settings = {
        "generation.height": 32,
        "generation.width": 32,
        "generation.steps": 2,
        "parallel.warmup_steps": 1,
    }
    job = pcpp_mpi.load_job(REPO / "jobs" / "tiny.yaml", settings)
    latents = []
    for nvtx in (False, True):
        run = pcpp_mpi.run(
            pcpp_mpi.with_settings(job, {"runtime.nvtx": nvtx}), tmp_path / f"nvtx-{nvtx}"
        )
        assert run.status == "complete" and run.job().runtime.nvtx is nvtx
        latents.append(run.info().latents)
    off, on = latents
    assert off.keys() == on.keys() == {"latent-0000"}
    assert (off["latent-0000"] == on["latent-0000"]).all()
