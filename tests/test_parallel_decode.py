"""The patch-parallel VAE decode: every rank decodes its band, only image rows travel.

- exactness and bytes: ``decode_driver.py`` decodes random latents with random-weight VAEs
  (the tiny model's and an SDXL-shaped one) on 2, 3 and 4 ranks with unequal bands (one of a
  single latent row) and compares the float32 pixels with the whole-latent decode;
- the run path: ``mpi_driver.py`` runs the tiny model's job with ``output.decode`` parallel and
  rank0, and the bytes every rank counted are compared with ``pcpp-mpi plan``'s;
- a failure inside the decode ends the job promptly with ``failed`` in ``run.h5``.

Tolerance: 1e-4 in absolute value on pixels of magnitude ~2.5 (the band-wise convolution
edges, GroupNorm sums and attention add in a different order than one whole-image pass); a
band decoded without its neighbours differs by more than 1e-2 (checked as a control).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mpi_launch import REPO, mpi_env, mpirun, mpirun_path

from pcpp_mpi.config import ConfigError, job_from_dict, load_job
from pcpp_mpi.geometry import Band
from pcpp_mpi.output import read_run
from pcpp_mpi.output.rank_file import read_table, read_traffic
from pcpp_mpi.plan.decode import (
    decode_bands,
    decode_position,
    decode_traffic,
    position_world_rank,
)
from pcpp_mpi.plan.layout import ModelShape, plan_layout
from pcpp_mpi.plan.topology import Topology
from pcpp_mpi.planning import make_plan

EXACT = 1e-4
BASE = REPO / "tests" / "data_tiny_exact.yaml"
UNET_SHAPE = ModelShape(levels=3, latent_channels=4, vae_scale_factor=8)


# ---------------------------------------------------------------- planning (pure)
def test_decode_bands_follow_the_layout_and_split_cfg_bands() -> None:
    plain = job_from_dict({"generation": {"height": 160, "width": 128}})
    layout = plan_layout(plain, 3, UNET_SHAPE)
    assert decode_bands("parallel", layout) == layout.bands
    assert decode_bands("rank0", layout) == (Band(0, 0, 20),)
    cfg = job_from_dict(
        {"generation": {"height": 160, "width": 128}, "parallel": {"cfg_parallel": True}}
    )
    split = plan_layout(cfg, 4, UNET_SHAPE)  # bands [0, 12) and [12, 20)
    assert [(b.start, b.stop) for b in decode_bands("parallel", split)] == [
        (0, 6), (6, 12), (12, 16), (16, 20)
    ]  # fmt: skip
    for rank in range(4):
        topology = Topology(4, rank, 2)
        position = decode_position(topology)
        assert position_world_rank(position, 2, 2) == rank
        band = decode_bands("parallel", split)[position]
        own = split.bands[topology.band_index]
        assert own.start <= band.start < band.stop <= own.stop  # inside the rank's own band


def test_one_decode_band_sends_nothing_and_one_row_cfg_bands_are_refused() -> None:
    plan = make_plan(job_from_dict({"generation": {"height": 128, "width": 96}}), 2)
    assert decode_traffic(plan.decoder, (Band(0, 0, 16),), 0, 4).sent == {}
    rank0 = make_plan(
        job_from_dict({"generation": {"height": 128}, "output": {"decode": "rank0"}}), 2
    )
    assert rank0.decode(1).sent == {} and rank0.final(1).sent == rank0.gather(1).sent
    assert set(plan.final(1).sent) == {"decode", "image", "gather"}
    no_latents = make_plan(job_from_dict({"output": {"latents": False}}), 2)
    assert "gather" not in no_latents.final(1).sent
    layout = plan_layout(job_from_dict({}), 2, ModelShape(1, 4, 8))
    one_row = type(layout)(**{**layout.__dict__, "cfg_groups": 2, "bands": (Band(0, 0, 1),)})
    with pytest.raises(ConfigError, match=r"output\.decode"):
        decode_bands("parallel", one_row)


def test_the_loader_checks_the_decode_switch() -> None:
    assert job_from_dict({}).output.decode == "parallel"
    assert job_from_dict({"output": {"decode": "rank0", "latents": False}}).output.latents is False
    with pytest.raises(ConfigError, match=r"output\.decode: must be one of 'parallel', 'rank0'"):
        job_from_dict({"output": {"decode": "everywhere"}})


# ---------------------------------------------------------------- exactness, on real ranks
@pytest.mark.mpi
@pytest.mark.parametrize("n", [2, 3, 4])
def test_parallel_decode_equals_the_whole_decode(tmp_path: Path, n: int) -> None:
    out = tmp_path / "decode.json"
    done = mpirun(n, [sys.executable, str(REPO / "tests" / "decode_driver.py"), str(out)])
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    engine = results.pop("engine")
    assert set(results) == {"tiny", "sdxl_shaped", "sd3_shaped"}
    assert results["sdxl_shaped"]["attentions"] == 1  # the mid-block attention is split too
    assert results["sd3_shaped"]["attentions"] == 1
    for name, result in results.items():
        assert result["max_diff"] < EXACT, (name, result)
        assert result["alone_diff"] > 1e-2, (name, result)  # the neighbours' rows matter
        assert result["scale"] > 0.5, (name, result)
        assert result["bytes_match"], (name, result)
        assert result["decode_sent"] > 0
    # SD3's VAE (16 latent channels, a shift factor): the engine's band-parallel decode equals
    # its rank-0 decode, and both equal diffusers' decode of latent / scaling + shift
    assert engine["parallel_vs_rank0"] < EXACT, engine
    assert engine["parallel_vs_reference"] < EXACT, engine
    assert engine["rank0_vs_reference"] < EXACT, engine
    assert engine["shift_matters"] > 1e-2, engine  # the shift is not lost in the comparison
    assert engine["scale"] > 0.1, engine


# ---------------------------------------------------------------- the run path
RUNS = {
    "parallel": [],
    "rank0": ["output.decode=rank0"],
    "no_latents": ["output.latents=false"],
    "pcpp": ["parallel.mode=pcpp", "parallel.warmup_steps=1"],
    "pcpp_rank0": ["parallel.mode=pcpp", "parallel.warmup_steps=1", "output.decode=rank0"],
    "cfg": ["parallel.cfg_parallel=true"],
}
STEPS = ["generation.steps=2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("decode_runs")
    spec = {
        "base": str(BASE),
        "out": str(root),
        "runs": {name: [*STEPS, *extra] for name, extra in RUNS.items()},
    }
    spec_path = root / "spec.json"
    spec_path.write_text(json.dumps(spec))
    done = mpirun(2, [sys.executable, str(REPO / "tests" / "mpi_driver.py"), str(spec_path)])
    assert done.returncode == 0, done.stderr[-3000:]
    return root


@pytest.mark.mpi
@pytest.mark.parametrize(("parallel", "rank0"), [("parallel", "rank0"), ("pcpp", "pcpp_rank0")])
def test_run_images_match_rank0_decoding(runs: Path, parallel: str, rank0: str) -> None:
    a, b = read_run(runs / parallel / "run.h5"), read_run(runs / rank0 / "run.h5")
    assert np.array_equal(a.latents["latent-0000"], b.latents["latent-0000"])
    image_a, image_b = a.images[0].array.astype(int), b.images[0].array.astype(int)
    assert image_a.shape == image_b.shape == (160, 128, 3)
    assert np.abs(image_a - image_b).max() <= 1  # float rounding may cross a uint8 level
    assert (image_a == image_b).mean() > 0.99


@pytest.mark.mpi
def test_latents_only_when_asked(runs: Path) -> None:
    info = read_run(runs / "no_latents" / "run.h5")
    assert info.status == "complete" and info.latents == {}
    reference = read_run(runs / "parallel" / "run.h5")
    assert np.array_equal(info.images[0].array, reference.images[0].array)
    for rank in range(2):
        kinds = {str(k) for k in read_traffic(runs / "no_latents" / f"rank-{rank:04d}.h5")["kind"]}
        assert "gather" not in kinds and "decode" in kinds


@pytest.mark.mpi
@pytest.mark.parametrize("name", list(RUNS))
def test_bytes_equal_the_plan(runs: Path, name: str) -> None:
    job = load_job(BASE, [*STEPS, *RUNS[name]])
    plan = make_plan(job, 2)
    steps = job.generation.steps
    for rank in range(2):
        table = read_traffic(runs / name / f"rank-{rank:04d}.h5")
        measured = {(int(r["step"]), str(r["kind"])): (int(r["sent"]), int(r["received"]))
                    for r in table}  # fmt: skip
        expected = {}
        for step in range(steps):
            traffic = plan.step_traffic(rank, plan.layout.mode, step)
            for kind in set(traffic.sent) | set(traffic.received):
                expected[(step, kind)] = (traffic.sent.get(kind, 0), traffic.received.get(kind, 0))
        final = plan.final(rank)
        for kind in set(final.sent) | set(final.received):
            expected[(steps - 1, kind)] = (final.sent.get(kind, 0), final.received.get(kind, 0))
        assert measured == expected, (name, rank)


@pytest.mark.mpi
@pytest.mark.parametrize("name", ["parallel", "cfg"])
def test_every_rank_traces_its_decode(runs: Path, name: str) -> None:
    """Each rank has a ``decode`` phase and its decode exchanges in ``/exchanges`` (outside
    any step), whose bytes add up to ``/traffic``'s; with cfg_parallel both groups decode."""
    for rank in range(2):
        path = runs / name / f"rank-{rank:04d}.h5"
        phases = read_table(path, "phases")
        assert "decode" in {str(p) for p in phases["name"]}
        exchanges = read_table(path, "exchanges")
        decode = exchanges[exchanges["kind"] == "decode"]
        assert len(decode) and set(decode["waited_in_step"].tolist()) == {-1}
        traffic = read_traffic(path)
        counted = traffic[traffic["kind"] == "decode"]
        assert int(decode["sent"].sum()) == int(counted["sent"].sum()) > 0
    rank1 = read_table(runs / "rank0" / "rank-0001.h5", "phases")
    assert "decode" not in {str(p) for p in rank1["name"]}  # rank 0 decodes alone there


# ---------------------------------------------------------------- a failure in the decode
@pytest.mark.mpi
def test_a_failure_inside_the_decode_ends_the_job_as_failed(tmp_path: Path) -> None:
    out = tmp_path / "run"
    command = [
        mpirun_path(), "-np", "2", "--oversubscribe", "--bind-to", "none", sys.executable,
        str(REPO / "tests" / "decode_fault_driver.py"), str(REPO / "jobs" / "tiny.yaml"),
        str(out), "1", "generation.height=128", "generation.width=96", "generation.steps=2",
        "parallel.mode=sync",
    ]  # fmt: skip
    started = time.monotonic()
    done = subprocess.run(
        command, env=mpi_env(), cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode != 0
    assert time.monotonic() - started < 240
    info = read_run(out / "run.h5")
    assert info.status == "failed"
    assert "rank 1" in info.error and "injected decode fault" in info.error
    steps = read_table(out / "rank-0000.h5", "steps")
    assert list(steps["step"]) == [0, 1]  # the denoising finished; the decode failed


# ---------------------------------------------------------------- the benchmark script
BENCH = REPO / "tools" / "bench_decode.py"


def test_bench_decode_checks_its_arguments_before_any_work(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--size", "100", "--out", str(tmp_path / "b")],
        env=mpi_env(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--size 100: not a positive multiple" in done.stderr
    assert not (tmp_path / "b").exists()


@pytest.mark.mpi
def test_bench_decode_measures_both_modes_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    args = [sys.executable, str(BENCH), "--arch", "tiny", "--size", "64", "--dtype", "float32",
            "--device", "cpu", "--repeats", "1", "--warmup", "0", "--out", str(out)]  # fmt: skip
    done = mpirun(2, args)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "decode.json").read_text())
    cases = {(r["mode"], r["rank"]) for r in report["results"]}
    assert cases == {("rank0", 0), ("rank0", 1), ("parallel", 0), ("parallel", 1)}
    assert all(r["time_median_s"] > 0 and r["peak_memory_bytes"] > 0 for r in report["results"])
    parallel = {r["rank"]: r["latent_rows"] for r in report["results"] if r["mode"] == "parallel"}
    assert parallel == {0: [0, 4], 1: [4, 8]}
    assert [s["size"] for s in report["shares"]] == [64]
    assert "| 64 | parallel | 1 | [4, 8) |" in (out / "decode.md").read_text()
