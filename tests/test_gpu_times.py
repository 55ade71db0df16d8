"""GPU step times: the event logic (with stand-in events, no GPU needed) and the tools' choice
of GPU times over host times in rank files that hold them."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import pytest
import torch
import yaml

from pcpp_mpi.analysis.files import load_run
from pcpp_mpi.analysis.gpu_times import check_step_times
from pcpp_mpi.analysis.perfetto import trace_events
from pcpp_mpi.analysis.report import to_json
from pcpp_mpi.analysis.summary import summarize_run
from pcpp_mpi.analysis.timeline import plot_timeline, timeline_title
from pcpp_mpi.engine.gpu_timer import GpuStepTimer
from pcpp_mpi.output import RunFile
from pcpp_mpi.output.rank_file import RankFile, rank_file_name, read_table
from pcpp_mpi.trace.recorder import GpuStepRow, PhaseRow, StepRow

REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------ stand-in GPU and events
@dataclass
class FakeGpu:
    """A GPU whose queue the test drives: an event records at the queue's end (``queued_ms``)
    and has completed once the GPU has run that far (``done_ms``)."""

    queued_ms: float = 0.0
    done_ms: float = 0.0
    queries: int = 0

    def event(self) -> FakeEvent:
        return FakeEvent(self)


@dataclass
class FakeEvent:
    gpu: FakeGpu
    at_ms: float | None = None

    def record(self, stream: object = None) -> None:
        self.at_ms = self.gpu.queued_ms

    def query(self) -> bool:
        self.gpu.queries += 1
        assert self.at_ms is not None
        return self.at_ms <= self.gpu.done_ms

    def elapsed_time(self, end_event: FakeEvent) -> float:
        assert self.query() and end_event.query(), "read before the event completed"
        assert self.at_ms is not None and end_event.at_ms is not None
        return end_event.at_ms - self.at_ms


@dataclass
class Host:
    clock: float = 10.0
    syncs: list[float] = field(default_factory=list)


def make_timer(gpu: FakeGpu, host: Host) -> GpuStepTimer:
    def synchronize() -> None:
        host.syncs.append(host.clock)
        gpu.done_ms = gpu.queued_ms

    return GpuStepTimer(torch.device("cpu"), lambda: host.clock, gpu.event, synchronize)


def run_step(timer: GpuStepTimer, gpu: FakeGpu, image: int, step: int, gpu_ms: float) -> None:
    """The host queues a step of ``gpu_ms`` on the GPU in no time (CUDA graphs)."""
    timer.begin_step(image, step)
    gpu.queued_ms += gpu_ms
    timer.end_step()


def test_step_times_are_read_late_without_waiting() -> None:
    gpu, host = FakeGpu(), Host()
    timer = make_timer(gpu, host)
    timer.start_image(0)
    assert host.syncs == [10.0]  # the anchor: one synchronize, before the first step
    run_step(timer, gpu, 0, 0, 40.0)
    assert timer.take_ready() == []  # the GPU has not finished step 0: nothing read, no wait
    run_step(timer, gpu, 0, 1, 40.0)
    gpu.done_ms = 45.0  # step 0 done, step 1 running
    run_step(timer, gpu, 0, 2, 40.0)
    assert timer.take_ready() == [GpuStepRow(0, 0, 10.0, 10.04)]
    gpu.done_ms = gpu.queued_ms  # the synchronize that ends the denoising loop
    timer.finish_image()
    rows = timer.take_ready()
    assert [(r.step, round(r.t_start, 6), round(r.wall, 6)) for r in rows] == [
        (1, 10.04, 0.04),
        (2, 10.08, 0.04),
    ]
    assert host.syncs == [10.0]  # never a synchronize per step
    assert timer.pool_size <= 3  # pairs are reused


def test_pool_grows_only_while_the_host_runs_ahead_and_images_reanchor() -> None:
    gpu, host = FakeGpu(), Host()
    timer = make_timer(gpu, host)
    timer.start_image(0)
    for step in range(6):  # the GPU finishes nothing meanwhile: six pairs in flight
        run_step(timer, gpu, 0, step, 10.0)
    assert timer.pool_size == 6 and timer.take_ready() == []
    gpu.done_ms = gpu.queued_ms
    timer.finish_image()
    assert [r.step for r in timer.take_ready()] == list(range(6))
    host.clock = 50.0
    timer.start_image(1)  # the GPU is idle at the anchor: GPU time 60 ms = host time 50 s
    for step in range(6):
        run_step(timer, gpu, 1, step, 10.0)
        gpu.done_ms = gpu.queued_ms  # the GPU keeps up: each step is read at the next
    timer.finish_image()
    rows = timer.take_ready()
    assert [r.image for r in rows] == [1] * 6
    assert rows[0].t_start == pytest.approx(50.0) and rows[-1].t_end == pytest.approx(50.06)
    assert timer.pool_size == 6  # no new pairs for image 1


# ------------------------------------------------------------------ the tools
def write_gpu_run(directory: Path, *, gpu: bool = True, denoise_extra_s: float = 0.0) -> Path:
    """One rank, one image, four steps: the host queues each step in 1 ms, the GPU runs it in
    40 ms (step 2: 60 ms); 5 ms of each step after the first was exposed waiting. The denoise
    phase ends with the last GPU step (plus ``denoise_extra_s``)."""
    directory.mkdir(parents=True, exist_ok=True)
    steps, gpu_rows = [], []
    gpu_t = 0.5
    for step in range(4):
        host_t = 0.5 + step * 0.001
        steps.append(StepRow(0, step, "displaced", host_t, host_t + 0.001, 0.005 * (step > 0)))
        wall = 0.060 if step == 2 else 0.040
        gpu_rows.append(GpuStepRow(0, step, gpu_t, gpu_t + wall))
        gpu_t += wall
    writer = RankFile(
        directory / rank_file_name(0),
        {"rank": 0, "n_ranks": 1, "band_index": 0, "cfg_index": 0, "band_start": 0,
         "band_stop": 8, "mode": "single", "host": "h", "device": "NVIDIA H100",
         "tracing": True, "epoch_unix": 1.7e9},
    )  # fmt: skip
    writer.append(
        steps=steps,
        phases=[PhaseRow("denoise", 0, 0.5, gpu_t + denoise_extra_s)],
        gpu_steps=gpu_rows if gpu else (),
    )
    writer.set_attrs(status="complete")
    writer.close()
    config = {"generation": {"steps": 4, "height": 64, "width": 64, "prompts": ["p"]}}
    run = RunFile.create(
        directory / "run.h5",
        config_yaml=yaml.safe_dump(config),
        provenance={"mode": "single", "n_ranks": 1},
        n_ranks=1,
        rank_files=[rank_file_name(0)],
    )
    run.set_status("complete")
    run.close()
    return directory


def test_summary_uses_gpu_step_times_when_present(tmp_path: Path) -> None:
    summary = summarize_run(load_run(write_gpu_run(tmp_path / "gpu")))
    assert summary.step_clock == "gpu"
    # counted steps 1..3 (the first is reported apart): 40, 60, 40 ms
    assert summary.step_median_s == pytest.approx(0.040)
    assert summary.first_step_s == pytest.approx(0.040)
    rank = summary.ranks[0]
    assert rank.wall_total_s == pytest.approx(0.140)
    assert rank.compute_total_s == pytest.approx(0.140 - 0.015)
    assert rank.exposed_share == pytest.approx(0.015 / 0.140)
    assert any("GPU times" in note for note in summary.notes)
    document = json.loads(to_json([summary]))
    assert document["runs"][0]["step_clock"] == "gpu"


def test_without_gpu_times_the_tools_keep_host_times(tmp_path: Path) -> None:
    run = load_run(write_gpu_run(tmp_path / "cpu", gpu=False))
    summary = summarize_run(run)
    assert summary.step_clock == "host"
    assert summary.step_median_s == pytest.approx(0.001)
    assert not any("GPU" in note for note in summary.notes)


def test_files_written_before_gpu_steps_existed_are_read(tmp_path: Path) -> None:
    directory = write_gpu_run(tmp_path / "old", gpu=False)
    with h5py.File(directory / "rank-0000.h5", "a", locking=False) as file:
        del file["gpu_steps"]
    assert len(read_table(directory / "rank-0000.h5", "gpu_steps")) == 0
    run = load_run(directory)
    assert run.step_clock == "host" and len(run.ranks[0].steps) == 4


def test_timeline_and_perfetto_place_steps_at_gpu_times(tmp_path: Path) -> None:
    run = load_run(write_gpu_run(tmp_path / "gpu"))
    steps = run.ranks[0].steps
    assert list(steps["t_start"]) == pytest.approx([0.5, 0.54, 0.58, 0.64])
    assert list(run.ranks[0].host_steps["wall"]) == pytest.approx([0.001] * 4)
    document = trace_events(run)
    assert document["otherData"]["step_times"] == "gpu"
    slices = [e for e in document["traceEvents"] if e.get("ph") == "X" and e.get("cat") == "step"]
    assert [round(e["dur"]) for e in slices] == [40_000, 40_000, 60_000, 40_000]
    assert timeline_title(run).endswith("step times: gpu")
    png = plot_timeline(run, tmp_path / "timeline.png")
    assert png.stat().st_size > 0


def test_gpu_steps_sum_matches_the_denoise_phase(tmp_path: Path) -> None:
    """What tools/check_gpu_step_times.py checks on a GPU, on synthetic files here."""
    (result,) = check_step_times(write_gpu_run(tmp_path / "gpu"), tolerance=0.02)
    assert result.ok and result.ratio == pytest.approx(1.0)
    assert result.gpu_sum_s == pytest.approx(0.180) and result.denoise_s == pytest.approx(0.180)
    assert result.host_sum_s == pytest.approx(0.004)
    (off,) = check_step_times(write_gpu_run(tmp_path / "off", denoise_extra_s=0.01))
    assert not off.ok and off.ratio == pytest.approx(0.18 / 0.19)
    (none,) = check_step_times(write_gpu_run(tmp_path / "cpu", gpu=False))
    assert not none.ok and none.gpu_steps == 0


@pytest.mark.parametrize(("extra", "code"), [(0.0, 0), (0.01, 1)])
def test_check_tool_prints_both_sums_and_exits_by_the_verdict(
    tmp_path: Path, extra: float, code: int
) -> None:
    run = write_gpu_run(tmp_path / "run", denoise_extra_s=extra)
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "check_gpu_step_times.py"), "--run", str(run)],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert result.returncode == code, result.stderr
    assert "sum of GPU step times 0.1800 s (4/4 steps)" in result.stdout
    assert f"denoise phase {0.18 + extra:.4f} s" in result.stdout and "ratio" in result.stdout
