"""tools/bench.py and tools/gpu_check.py on the CPU: the programs run, and their figures hold."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
import torch
from mpi_launch import REPO, mpirun
from pixart_folder import make_pixart_folder
from sd3_folder import make_sd3_folder

from pcpp_mpi.output import read_run

pytestmark = pytest.mark.mpi
TOOLS = REPO / "tools"


def test_bench_writes_every_case(tmp_path) -> None:
    out = tmp_path / "bench"
    result = mpirun(
        2,
        [
            sys.executable,
            str(REPO / "tools" / "bench.py"),
            "--arch", "tiny", "--sizes", "64", "--steps", "3", "--warmup-steps", "1",
            "--reps", "2", "--device", "cpu", "--dtype", "float32", "--out", str(out),
            "--cases", "plain-eager", "single", "pcpp", "naive", "cfg", "pcpp-eager",
            "--set", "runtime.graphs=emulate", "--profile", "single", "pcpp",
        ],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    rows = {r["case"]: r for r in data["results"]}
    assert set(rows) == {"plain-eager", "single", "pcpp", "naive", "cfg", "pcpp-eager"}
    for name, row in rows.items():
        assert len(row["times"]) == 2 and all(t > 0 for t in row["times"]), name
        assert row["median"] == pytest.approx(sum(row["times"]) / 2), name
    assert rows["single"]["ranks"] == 1 and rows["pcpp"]["ranks"] == 2
    assert rows["naive"]["exposed_share"] == 0.0
    assert 0.0 <= rows["pcpp"]["exposed_share"] < 1.0
    assert all(e > 0 for e in rows["pcpp"]["end_to_end"])
    # every pcpp-mpi case kept its run directory; the emulated replays really happened
    with h5py.File(out / "runs" / "64-pcpp" / "rank-0001.h5", "r", locking=False) as rank_file:
        assert rank_file.attrs["graphs"] == "emulate"
        assert rank_file.attrs["graph_replays"] == 3 * 3 - 1  # 3 images x 3 steps, first eager
    with h5py.File(out / "runs" / "64-pcpp-eager" / "rank-0000.h5", "r", locking=False) as f:
        assert f.attrs["graphs"] == "eager"
    assert data["meta"]["family"] == "unet" and data["meta"]["scheduler"] == "ddim"
    with h5py.File(out / "results.h5", "r", locking=False) as file:
        assert file.attrs["arch"] == "tiny" and file.attrs["scheduler"] == "ddim"
        assert list(file["64/pcpp/denoising_loop_s"][()]) == rows["pcpp"]["times"]
        # the name of earlier results files still reads (a hard link to the same data)
        assert list(file["64/pcpp/unet_loop_s"][()]) == rows["pcpp"]["times"]
        assert _bench_tool().read_loop_times(file["64/pcpp"]) == rows["pcpp"]["times"]
    table = (out / "results.md").read_text()
    assert table.startswith("# tiny UNet, 3 steps (ddim), CFG batch 2, float32,")
    assert "| 64 | pcpp | 2 |" in table
    # --profile found every rank's denoising range (no CUDA kernels on the CPU: all idle)
    profiles = rows["pcpp"]["gpu_profile"]
    assert len(profiles) == 2 and len(rows["single"]["gpu_profile"]) == 1
    assert "gpu_profile" not in rows["naive"]  # only the cases named after --profile
    for profile in profiles:
        assert profile["steps"] == 3 and profile["window_ms_per_step"] > 0
        assert profile["kernels"] == 0 and profile["idle_share"] == 1.0
        # no kernel: the whole window is one idle gap
        gaps = profile["idle_gaps"]
        assert sum(g["per_step"] for g in gaps) == pytest.approx(1 / 3)
        assert sum(g["ms_per_step"] for g in gaps) == pytest.approx(profile["idle_ms_per_step"])
    assert "| 64 | pcpp | 1 |" in table  # the profile table, one line per rank


def test_bench_runs_a_flow_matching_transformer(tmp_path, sd3_folder: Path) -> None:
    """A tiny SD3 folder: the plain loop and the pcpp-mpi cases step flow-matching Euler
    (``--scheduler auto``), and the results say which model family and scheduler ran."""
    out = tmp_path / "bench"
    result = mpirun(
        2,
        [
            sys.executable,
            str(REPO / "tools" / "bench.py"),
            "--arch", "tiny", "--sizes", "64", "--steps", "3", "--warmup-steps", "1",
            "--reps", "1", "--device", "cpu", "--dtype", "float32", "--out", str(out),
            "--cases", "plain-eager", "single", "pcpp",
            "--set", "model.builtin=null", "--set", f"model.path={sd3_folder}",
        ],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    assert data["meta"]["family"] == "sd3" and data["meta"]["scheduler"] == "flow-euler"
    rows = {r["case"]: r for r in data["results"]}
    assert set(rows) == {"plain-eager", "single", "pcpp"}
    assert all(len(row["times"]) == 1 and row["times"][0] > 0 for row in rows.values())
    for case in ("single", "pcpp"):
        info = read_run(out / "runs" / f"64-{case}" / "run.h5")
        assert info.provenance["scheduler"] == "flow-euler", case
    table = (out / "results.md").read_text()
    assert table.startswith("# tiny SD3 transformer, 3 steps (flow-euler), CFG batch 2,")
    assert "| 64 | pcpp | 2 |" in table


def test_bench_refuses_a_bad_setting_before_any_work(tmp_path) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(TOOLS / "bench.py"), "--arch", "tiny", "--device", "cpu",
         "--out", str(out), "--set", "parallel.mode=fastest"],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and "parallel.mode" in result.stderr
    assert not out.exists()


@pytest.fixture(scope="module")
def sd3_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sd3_folder(tmp_path_factory.mktemp("bench_sd3") / "sd3")


@pytest.fixture(scope="module")
def pixart_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pixart_folder(tmp_path_factory.mktemp("bench_pixart") / "pixart")


def _bench_tool():
    spec = importlib.util.spec_from_file_location("bench", TOOLS / "bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while defined
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


@pytest.mark.parametrize(
    ("model", "family", "scheduler"),
    [("tiny", "unet", "ddim"), ("sd3", "sd3", "flow-euler"), ("pixart", "pixart", "ddim")],
)
def test_plain_loop_equals_the_engines_single_image(
    tmp_path, request: pytest.FixtureRequest, model: str, family: str, scheduler: str
) -> None:
    """bench.py's plain one-GPU reference denoises like pcpp-mpi's ``single`` mode: the same
    family's network, conditioning and scheduler (``auto`` resolved from the model), from the
    same noise, give the same latent to float32 rounding (here on the CPU, eagerly)."""
    from mpi4py import MPI

    from pcpp_mpi.comm.context import RankComm
    from pcpp_mpi.engine.denoise import denoise_band, initial_noise
    from pcpp_mpi.engine.setup import prepare_band_context
    from pcpp_mpi.models import load_model

    bench = _bench_tool()
    argv = ["--arch", "tiny", "--sizes", "64", "--steps", "3", "--device", "cpu",
            "--dtype", "float32", "--cases", "plain-eager", "single",
            "--out", str(tmp_path)]  # fmt: skip
    if model != "tiny":
        folder = request.getfixturevalue(f"{model}_folder")
        argv += ["--set", "model.builtin=null", "--set", f"model.path={folder}"]
    args = bench._args(argv)
    job = bench._job(args, 64, bench.Case("single"), 1)
    device = torch.device("cpu")
    bundle = load_model(job.model, torch.float32, device)
    generation = job.generation
    with torch.no_grad():
        loop = bench.plain_loop(job, bundle, device)
        assert loop.family.name == family and loop.scheduler == scheduler
        noise = initial_noise(generation.seed, *loop.sample.shape[1:])
        plain = loop.denoise(loop.start(noise))
    comm = RankComm(MPI.COMM_SELF, 1)
    try:
        ctx = prepare_band_context(job, comm, bundle, device)
        try:
            single = denoise_band(ctx, bench.PROMPT, "", generation.seed)
        finally:
            ctx.handle.remove()
    finally:
        comm.free()
    assert single.shape == plain.shape == noise.shape
    assert float(plain.abs().max()) > 0.5  # a latent, not zeros
    assert torch.allclose(plain, single, rtol=1e-4, atol=1e-4), (plain - single).abs().max()


def test_gpu_check_runs_on_the_cpu(tmp_path) -> None:
    """Every mode eager and replayed, against single, bytes against plan (here: all eager)."""
    out = tmp_path / "check"
    result = mpirun(
        2,
        [
            sys.executable,
            str(REPO / "tools" / "gpu_check.py"),
            "--arch", "tiny", "--size", "64", "--steps", "3", "--device", "cpu",
            "--dtype", "float32", "--out", str(out),
        ],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "check.json").read_text())
    cases = report["cases"]
    assert cases["sync/eager"]["relative"] < 1e-5
    assert cases["sync/graphs"]["graphs_vs_eager_max_abs_diff"] == 0.0
    assert all(case["byte_mismatches"] == 0 for case in cases.values())


def test_band_step_timer_refuses_without_a_gpu_and_checks_its_steps(tmp_path) -> None:
    """tools/bench_band_step.py times CUDA graphs: on the CPU it says so before any work."""
    script = str(REPO / "tools" / "bench_band_step.py")
    out = tmp_path / "steps"
    result = subprocess.run(
        [sys.executable, script, "--out", str(out)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2 and "no CUDA device" in result.stderr
    assert not out.exists()
    result = subprocess.run(
        [sys.executable, script, "--steps", "5", "--warmup-steps", "4", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "--steps must exceed --warmup-steps" in result.stderr


def test_stream_overlap_probe_refuses_without_a_gpu(tmp_path) -> None:
    """tools/bench_stream_overlap.py times device transfers: on the CPU it says so."""
    out = tmp_path / "overlap.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "bench_stream_overlap.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "no CUDA device" in result.stderr
    assert not out.exists()


def test_band_step_tables_show_every_variant_and_the_profiled_ones() -> None:
    module = _band_step_tool()
    profile = {
        "steps": 5,
        "kernels": 500,
        "window_ms_per_step": 2.0,
        "busy_ms_per_step": 1.5,
        "idle_ms_per_step": 0.5,
        "by_category_ms_per_step": {"gemm": 1.0, "copy": 0.25},
        "idle_gaps": [{"bucket": "0-20us", "per_step": 99.0, "ms_per_step": 0.4}],
    }
    report = {
        "device": "test GPU",
        "norm_kernels": "triton",
        "modes": {
            "naive": [
                {"local/local/0": {"ms": 1.25, "graphs": 1, "profile": profile}},
                {"local/local/0": {"ms": 1.5, "graphs": 1}},
            ],
            "single": [{"local/None/0": {"ms": 2.0, "graphs": 1}}],
        },
    }
    args = module._args(["--out", "unused", "--size", "64", "--arch", "tiny"])
    table = module._markdown(args, report)
    assert "test GPU; GroupNorm kernels: triton)" in table.splitlines()[0]
    assert "| naive | 0 | local/local/0 | 1 | 1.250 |" in table
    assert "| naive | 1 | local/local/0 | 1 | 1.500 |" in table
    assert "| single | 0 | local/None/0 | 1 | 2.000 |" in table
    # the profiled variant: 100 kernels per step, 99 short gaps, GEMM and copy columns
    assert "| naive | local/local/0 | 100 | 2.00 | 1.50 | 0.50 | 99 / 0.40 | 0.00 | 1.00 |" in table


def _band_step_tool():
    spec = importlib.util.spec_from_file_location("bench_band_step", TOOLS / "bench_band_step.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_band_step_image_bounds_sum_the_variants_each_step_replays() -> None:
    module = _band_step_tool()
    assert module.image_variants("pcpp", 6, 2) == [
        "sync/None/0", "sync/sync/1", "displaced/sync/0", "displaced/displaced/1",
        "displaced/displaced/0", "displaced_last/displaced/1",
    ]  # fmt: skip
    naive = module.image_variants("naive", 3, 4)
    assert naive == ["local/None/0", "local/local/1", "local/local/0"]

    def timed(ms: dict[str, float]) -> dict:
        return {name: {"ms": value, "graphs": 1} for name, value in ms.items()}

    local = {"local/None/0": 4.0, "local/local/0": 4.0, "local/local/1": 4.0}
    displaced = {
        "sync/None/0": 3.0, "sync/sync/1": 3.0, "sync/sync/0": 3.0, "displaced/sync/0": 2.5,
        "displaced/displaced/1": 2.0, "displaced/displaced/0": 2.0,
        "displaced_last/displaced/1": 1.0,
    }  # fmt: skip
    slower = {**displaced, "displaced/displaced/0": 2.5}
    report = {
        "modes": {
            "single": [timed(local)],
            "naive": [timed({k: v / 2 for k, v in local.items()})] * 2,
            "pcpp": [timed(displaced), timed(slower)],  # the slowest rank counts
            "sync": [timed({"sync/None/0": 3.0})],  # a variant missing: no bound
        }
    }
    bounds = module.image_bounds(report, 6, 2)
    assert set(bounds) == {"single", "naive", "pcpp"}
    assert bounds["single"] == {"image_ms": 24.0, "vs_single": 1.0}
    assert bounds["naive"]["vs_single"] == 2.0
    # 3 + 3 (sync) + 2.5 + 2.0 + 2.5 + 1.0 on rank 1
    assert bounds["pcpp"] == {"image_ms": 14.0, "vs_single": 24.0 / 14.0}
    args = module._args(
        ["--out", "unused", "--steps", "6", "--warmup-steps", "2", "--image-steps", "6"]
    )
    shown = {**report, "device": "GPU", "norm_kernels": "torch", "bounds": bounds}
    table = module._markdown(args, shown)
    assert "| pcpp | 14.0 | 1.714x |" in table


def _one_mode_report(mode: str, variants: dict[str, float], **changes) -> dict:
    settings = {"arch": "sdxl", "size": 1024, "steps": 8, "warmup_steps": 2, "image_steps": 4,
                "ratio": 0.3, "warmup": 3, "replays": 20, "dtype": "float16"}  # fmt: skip
    report = {
        "device": "GPU",
        "ranks": 2,
        "overrides": [],
        "norm_kernels": "triton",
        "settings": settings,
        "modes": {mode: [{name: {"ms": ms, "graphs": 1} for name, ms in variants.items()}]},
    }
    for key, value in changes.items():
        if key in settings:
            settings[key] = value
        else:
            report[key] = value
    return report


def test_band_step_reports_of_one_mode_each_merge_with_their_bounds(tmp_path) -> None:
    """band_steps.sh times each mode in its own process and joins the reports with --merge."""
    module = _band_step_tool()
    local = {"local/None/0": 4.0, "local/local/1": 4.0, "local/local/0": 4.0}
    displaced = {"sync/None/0": 3.0, "sync/sync/1": 3.0, "displaced/sync/0": 2.0,
                 "displaced_last/displaced/1": 2.0}  # fmt: skip
    single = _one_mode_report("single", local)
    pcpp = _one_mode_report("pcpp", displaced)
    merged = module.merge_reports([single, pcpp])
    assert list(merged["modes"]) == ["single", "pcpp"]
    assert merged["bounds"]["pcpp"] == {"image_ms": 10.0, "vs_single": 16.0 / 10.0}
    with pytest.raises(ValueError, match="more than one report"):
        module.merge_reports([single, single])
    with pytest.raises(ValueError, match="differ in settings"):
        module.merge_reports([single, _one_mode_report("pcpp", {}, size=2048)])
    with pytest.raises(ValueError, match="differ in device"):
        module.merge_reports([single, _one_mode_report("pcpp", {}, device="other GPU")])
    # the command line: no GPU needed; an existing report is never overwritten
    paths = []
    for report in (single, pcpp):
        path = tmp_path / f"{next(iter(report['modes']))}.json"
        path.write_text(json.dumps(report))
        paths.append(str(path))
    out = tmp_path / "merged"
    command = [sys.executable, str(TOOLS / "bench_band_step.py"), "--merge", *paths,
               "--out", str(out)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    written = json.loads((out / "band_steps.json").read_text())
    assert written["bounds"]["pcpp"]["vs_single"] == 1.6
    assert "| pcpp | 10.0 | 1.600x |" in (out / "band_steps.md").read_text()
    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "already holds a report" in again.stderr
    assert json.loads((out / "band_steps.json").read_text()) == written


@pytest.mark.parametrize(
    ("run", "report_name", "size", "quoted"),
    [
        # single and naive with PyTorch's GroupNorm, the displaced modes with the Triton one
        (
            "12-triton-group-norm-1xh200",
            "band-1024",
            1024,
            {"pcpp": 1.675, "distrifusion": 1.613, "naive": 1.757, "sync": 1.605},
        ),
        # every mode with the Triton GroupNorm: the fair one-GPU baseline
        (
            "13-fair-single-1xh200",
            "band-1024",
            1024,
            {"pcpp": 1.555, "distrifusion": 1.499, "naive": 1.743},
        ),
        # K/V frames and one statistics exchange per displaced step
        (
            "15-kv-frames-step-stats-1xh200",
            "band-1024",
            1024,
            {"pcpp": 1.673, "distrifusion": 1.294, "naive": 1.765},
        ),
        # each mode in a process of its own (tools/device/band_steps.sh), own compute stream
        (
            "17-band-steps-apart-1xh200",
            "band-1024",
            1024,
            {"pcpp": 1.681, "distrifusion": 1.652, "naive": 1.776},
        ),
        (
            "17-band-steps-apart-1xh200",
            "band-2048",
            2048,
            {"pcpp": 2.156, "distrifusion": 1.956, "naive": 2.323},
        ),
        # the same commit, every mode in one process, with and without kernel profiles
        (
            "17-band-steps-apart-1xh200",
            "one-process-profiled-1024",
            1024,
            {"pcpp": 1.684, "distrifusion": 1.652, "naive": 1.777},
        ),
        (
            "17-band-steps-apart-1xh200",
            "one-process-plain-1024",
            1024,
            {"pcpp": 1.691, "distrifusion": 1.657, "naive": 1.784},
        ),
    ],
)
def test_band_step_bounds_of_the_recorded_runs(
    run: str, report_name: str, size: int, quoted: dict[str, float]
) -> None:
    """The bounds quoted in docs/BENCHMARKS.md and the results' READMEs, recomputed from the
    raw timings."""
    module = _band_step_tool()
    report = json.loads(
        (REPO / "docs" / "benchmarks" / "results" / run / f"{report_name}.json").read_text()
    )
    if "settings" in report:  # reports record their settings since results/16
        assert report["settings"]["size"] == size
    bounds = module.image_bounds(report, 50, 4)
    assert {mode: round(b["vs_single"], 3) for mode, b in bounds.items()} == {
        "single": 1.0,
        **quoted,
    }


def test_band_step_rejects_a_bad_job_setting_before_any_work(tmp_path) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(TOOLS / "bench_band_step.py"), "--out", str(out), "--set",
         "runtime.norm_kernels=fastest"],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and "runtime.norm_kernels" in result.stderr
    assert not out.exists()


def _device_script(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``tools/device/NAME`` from the repository root (as on the GPU machine)."""
    script = str(REPO / "tools" / "device" / name)
    return subprocess.run(
        ["bash", script, *args], cwd=REPO, capture_output=True, text=True, timeout=60
    )


def test_device_measure_script_checks_its_arguments_before_any_work(tmp_path) -> None:
    """tools/device/measure.sh (GPU machine only) refuses bad arguments and earlier results
    before it sources the device environment or runs anything."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return _device_script("measure.sh", *args)

    for bad in ((), ("1024",), ("big", str(tmp_path)), ("1024", str(tmp_path), "two")):
        result = run(*bad)
        assert result.returncode == 2 and "usage: bash tools/device/measure.sh" in result.stderr
    (tmp_path / "bench-2048").mkdir()
    result = run("2048", str(tmp_path))
    assert result.returncode == 2 and "already holds results for 2048 px" in result.stderr
    (tmp_path / "measure-1024.tgz").write_bytes(b"earlier results")
    result = run("1024", str(tmp_path))
    assert result.returncode == 2 and "already holds results for 1024 px" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench-2048", "measure-1024.tgz"]
    assert (tmp_path / "measure-1024.tgz").read_bytes() == b"earlier results"


def test_device_band_steps_script_checks_its_arguments_before_any_work(tmp_path) -> None:
    """tools/device/band_steps.sh (GPU machine only): same refusals as measure.sh."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return _device_script("band_steps.sh", *args)

    for bad in ((), ("1024",), ("big", str(tmp_path)), ("1024", str(tmp_path), "two")):
        result = run(*bad)
        assert result.returncode == 2 and "usage: bash tools/device/band_steps.sh" in result.stderr
    for earlier in ("band-2048", "band-1024.tgz"):
        (tmp_path / earlier).write_bytes(b"earlier results")
        size = earlier[5:9]
        result = run(size, str(tmp_path))
        assert result.returncode == 2 and f"already holds band steps for {size} px" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["band-1024.tgz", "band-2048"]


@pytest.mark.parametrize(
    ("report_path", "quoted"),
    [
        (
            "call2-band-1024/band-1024/band_steps.json",
            {"plain-graph": 0.785, "plain-compile": 1.0, "single": 0.987},
        ),
        (
            "call3-band-1024/band-1024/band_steps.json",
            {"plain-compile": 1.0, "single": 0.989, "pcpp": 1.531, "distrifusion": 1.499},
        ),
    ],
)
def test_compiled_bounds_of_the_recorded_runs(report_path: str, quoted: dict[str, float]) -> None:
    """The compiled path's bounds against the fastest one-GPU image (docs/BENCHMARKS.md,
    results/18), recomputed from the raw timings."""
    module = _band_step_tool()
    results = REPO / "docs" / "benchmarks" / "results" / "18-compiled-1xh100"
    report = json.loads((results / report_path).read_text())
    assert report["settings"]["size"] == 1024
    bounds = module.image_bounds(report, 50, 4)
    assert {mode: round(b["vs_fastest"], 3) for mode, b in bounds.items()} == quoted
    assert {b["fastest"] for b in bounds.values()} == {"plain-compile"}
