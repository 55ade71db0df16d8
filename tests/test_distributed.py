"""The exactness invariants and byte accounting, on real MPI ranks with the tiny model.

Each rank count is launched once (``mpirun -np N tests/mpi_driver.py``) and runs several jobs
through the same engine path as ``pcpp-mpi run``; the tests then read the run files.

Tolerance: "equal" means the final latents differ by at most ``EXACT`` = 1e-4 in absolute
value. The latents of the random-weight tiny model reach |x| ~ 30 after 6 steps, so 1e-4 is
about 3e-6 of the output scale: a few float32 rounding steps, as the band-wise convolutions,
GroupNorm sums and attention reductions add in a different order than one full-image pass. A
real error (a missing halo row, stale statistics, a wrong K/V row) moves the latent by far more
than 1e-2 (see ``test_displaced_modes_differ_from_single``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from model_folder import make_model_folder
from mpi_launch import REPO, mpirun

from pcpp_mpi.config import load_job
from pcpp_mpi.output import read_run
from pcpp_mpi.output.rank_file import read_rank_attrs, read_traffic
from pcpp_mpi.planning import make_plan

pytestmark = pytest.mark.mpi

BASE = REPO / "tests" / "data_tiny_exact.yaml"
EXACT = 1e-4
STEPS = 6

SD_FOLDER = ["model.builtin=null", "model.path={sd}"]
# torch.compile on the CPU without generating code (inductor needs minutes per model here):
# the traced layers, the exchange operators and the compiled step's replay are all exercised
COMPILED = ["runtime.compile=true", "runtime.compile_backend=aot_eager"]
SDXL_FOLDER = ["model.builtin=null", "model.path={sdxl}"]

RUNS: dict[int, dict[str, list[str]]] = {
    1: {
        "single": [],
        "sd_single": SD_FOLDER,
        "sdxl_single": SDXL_FOLDER,
        "single_256": ["generation.height=256"],
        "single_dpm": ["generation.scheduler=dpmsolver++"],
        "single_euler": ["generation.scheduler=euler"],
        "single_flow": ["generation.scheduler=flow-euler"],
    },
    2: {
        "sync": [],
        "sync_dpm": ["generation.scheduler=dpmsolver++"],
        "sync_flow": ["generation.scheduler=flow-euler"],
        "distrifusion_warm": ["parallel.mode=distrifusion", f"parallel.warmup_steps={STEPS}"],
        "pcpp_r1_warm": [
            "parallel.mode=pcpp",
            "parallel.ratio=1.0",
            f"parallel.warmup_steps={STEPS}",
        ],
        "distrifusion": ["parallel.mode=distrifusion"],
        "distrifusion_again": ["parallel.mode=distrifusion"],
        "pcpp": ["parallel.mode=pcpp"],
        "pcpp_again": ["parallel.mode=pcpp"],
        "pcpp_r1": ["parallel.mode=pcpp", "parallel.ratio=1.0"],
        "pcpp_norm_stats": ["parallel.mode=pcpp", "runtime.stats_per_step=false"],
        "distrifusion_separate": [
            "parallel.mode=distrifusion",
            "runtime.stats_per_step=false",
            "runtime.kv_frames=false",
        ],
        "naive": ["parallel.mode=naive"],
        "cfg_sync": ["parallel.cfg_parallel=true"],
        "sd_sync": SD_FOLDER,
        "distrifusion_graphs": ["parallel.mode=distrifusion", "runtime.graphs=emulate"],
        "pcpp_graphs": ["parallel.mode=pcpp", "runtime.graphs=emulate"],
        "naive_graphs": ["parallel.mode=naive", "runtime.graphs=emulate"],
        "pcpp_10": ["parallel.mode=pcpp", "generation.steps=10"],
        "pcpp_10_graphs": ["parallel.mode=pcpp", "generation.steps=10", "runtime.graphs=emulate"],
        "cfg_sync_graphs": ["parallel.cfg_parallel=true", "runtime.graphs=emulate"],
        "sync_compiled": COMPILED,
        "pcpp_compiled": ["parallel.mode=pcpp", *COMPILED],
        "pcpp_compiled_graphs": ["parallel.mode=pcpp", *COMPILED, "runtime.graphs=emulate"],
        "pcpp_compiled_warmup": ["parallel.mode=pcpp", *COMPILED, "runtime.compile_warmup=true"],
    },
    3: {
        "sync": [],
        "sync_euler": ["generation.scheduler=euler"],
        "distrifusion_warm": ["parallel.mode=distrifusion", f"parallel.warmup_steps={STEPS}"],
        "distrifusion": ["parallel.mode=distrifusion"],
        "pcpp": ["parallel.mode=pcpp"],
        "naive": ["parallel.mode=naive"],
        "sdxl_sync": SDXL_FOLDER,
        "sdxl_pcpp": [*SDXL_FOLDER, "parallel.mode=pcpp"],
        "sync_graphs": ["runtime.graphs=emulate"],
        "pcpp_graphs": ["parallel.mode=pcpp", "runtime.graphs=emulate"],
        "distrifusion_10": ["parallel.mode=distrifusion", "generation.steps=10"],
        "distrifusion_10_graphs": [
            "parallel.mode=distrifusion",
            "generation.steps=10",
            "runtime.graphs=emulate",
        ],
    },
    4: {
        "sync": [],
        "cfg_sync": ["parallel.cfg_parallel=true"],
        "cfg_pcpp": ["parallel.cfg_parallel=true", "parallel.mode=pcpp"],
        "cfg_pcpp_graphs": [
            "parallel.cfg_parallel=true",
            "parallel.mode=pcpp",
            "runtime.graphs=emulate",
        ],
        "distrifusion": ["parallel.mode=distrifusion"],
        "pcpp": ["parallel.mode=pcpp"],
    },
    8: {  # the 8-rank code paths (8 bands; 4 bands x 2 CFG groups), at 256 px = 8 units
        "sync_256": ["generation.height=256"],
        "cfg_pcpp_256": [
            "generation.height=256",
            "parallel.cfg_parallel=true",
            "parallel.mode=pcpp",
        ],
    },
}


@pytest.fixture(scope="session")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Tiny local diffusers folders: an SD-style and an SDXL-style pipeline."""
    root = tmp_path_factory.mktemp("folders")
    return {kind: str(make_model_folder(root / kind, kind=kind)) for kind in ("sd", "sdxl")}


def overrides(n: int, name: str, folders: dict[str, str]) -> list[str]:
    return [item.format(**folders) for item in RUNS[n][name]]


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory, folders: dict[str, str]):
    """``runs(n)`` -> the directory holding every run of the ``n``-rank launch."""
    root = tmp_path_factory.mktemp("distributed")
    done: dict[int, Path] = {}

    def get(n: int) -> Path:
        if n not in done:
            out = root / f"np{n}"
            spec = root / f"np{n}.json"
            jobs = {name: overrides(n, name, folders) for name in RUNS[n]}
            spec.write_text(json.dumps({"base": str(BASE), "out": str(out), "runs": jobs}))
            result = mpirun(n, [_python(), str(REPO / "tests" / "mpi_driver.py"), str(spec)])
            assert result.returncode == 0, result.stderr[-5000:]
            done[n] = out
        return done[n]

    return get


def _python() -> str:
    import sys

    return sys.executable


def latent(run_dir: Path) -> np.ndarray:
    info = read_run(run_dir / "run.h5")
    assert info.status == "complete"
    return info.latents["latent-0000"]


def max_diff(a: Path, b: Path) -> float:
    return float(np.abs(latent(a) - latent(b)).max())


# ---------------------------------------------------------------- exactness invariants
@pytest.mark.parametrize("n", [2, 3, 4])
def test_sync_equals_single(runs, n: int) -> None:
    single = runs(1) / "single"
    assert max_diff(runs(n) / "sync", single) < EXACT
    # and the latent is far from trivial: the comparison is meaningful
    assert np.abs(latent(single)).max() > 1.0


def test_eight_ranks_sync_equals_single(runs) -> None:
    assert max_diff(runs(8) / "sync_256", runs(1) / "single_256") < EXACT
    assert max_diff(runs(8) / "cfg_pcpp_256", runs(1) / "single_256") > 1e-3


def test_compiled_sync_equals_single(runs) -> None:
    """``sync`` with every step's UNet call compiled (torch.compile, exchanges as custom
    operators) equals one rank."""
    assert max_diff(runs(2) / "sync_compiled", runs(1) / "single") <= EXACT
    for rank in range(2):
        attrs = read_rank_attrs(runs(2) / "sync_compiled" / f"rank-{rank:04d}.h5")
        assert attrs["compiled_phases"] == "fresh"
        assert attrs["compile_seconds"] > 0


def test_compiled_pcpp_equals_uncompiled_pcpp(runs) -> None:
    """The displaced steps compiled give the latent of the uncompiled layers (same arithmetic
    up to rounding: the compiled GroupNorm applies its statistics as separate operations)."""
    compiled = runs(2) / "pcpp_compiled"
    assert max_diff(compiled, runs(2) / "pcpp") <= EXACT
    for rank in range(2):
        assert read_rank_attrs(compiled / f"rank-{rank:04d}.h5")["compiled_phases"] == "stale"


def test_compiled_warmup_steps_equal_uncompiled_pcpp(runs) -> None:
    """``runtime.compile_warmup`` compiles the ``sync`` warm-up steps as a second phase: the
    latent is still the uncompiled one's."""
    compiled = runs(2) / "pcpp_compiled_warmup"
    assert max_diff(compiled, runs(2) / "pcpp") <= EXACT
    for rank in range(2):
        attrs = read_rank_attrs(compiled / f"rank-{rank:04d}.h5")
        assert attrs["compiled_phases"] == "fresh,stale"


@pytest.mark.parametrize("n", [2, 3])
def test_distrifusion_all_warm_equals_single(runs, n: int) -> None:
    assert max_diff(runs(n) / "distrifusion_warm", runs(1) / "single") < EXACT


def test_pcpp_ratio_one_all_warm_equals_single(runs) -> None:
    assert max_diff(runs(2) / "pcpp_r1_warm", runs(1) / "single") < EXACT


@pytest.mark.parametrize("n", [2, 4])
def test_cfg_parallel_sync_equals_single(runs, n: int) -> None:
    assert max_diff(runs(n) / "cfg_sync", runs(1) / "single") < EXACT


def test_sharded_schedulers_equal_single(runs) -> None:
    assert max_diff(runs(2) / "sync_dpm", runs(1) / "single_dpm") < EXACT
    assert max_diff(runs(3) / "sync_euler", runs(1) / "single_euler") < EXACT
    # flow matching (SD3's Euler steps, timesteps 1000 sigma) on the tiny model's network
    assert max_diff(runs(2) / "sync_flow", runs(1) / "single_flow") < EXACT
    assert max_diff(runs(1) / "single_flow", runs(1) / "single") > 1e-2  # a schedule of its own


def test_local_folders_sync_equals_single(runs) -> None:
    """Real text encoders and tokenizers; SDXL's pooled text and time-id conditioning."""
    assert max_diff(runs(2) / "sd_sync", runs(1) / "sd_single") < EXACT
    assert max_diff(runs(3) / "sdxl_sync", runs(1) / "sdxl_single") < EXACT
    assert max_diff(runs(3) / "sdxl_pcpp", runs(1) / "sdxl_single") > 1e-3


def test_pcpp_ratio_one_on_two_ranks_equals_distrifusion(runs) -> None:
    """On 2 ranks the whole neighbour band is all the other context there is."""
    assert max_diff(runs(2) / "pcpp_r1", runs(2) / "distrifusion") < EXACT


def test_step_statistics_equal_per_norm_statistics(runs) -> None:
    """Every norm's statistics in one all-reduce per displaced step: on 2 ranks the same sums,
    so the same latent bit for bit as one all-reduce per norm."""
    assert np.array_equal(latent(runs(2) / "pcpp"), latent(runs(2) / "pcpp_norm_stats"))


def test_frames_and_step_statistics_match_separate_exchanges(runs) -> None:
    """K/V read in place from the frames and the statistics of a step in one all-reduce give
    the run with separate buffers and per-norm all-reduces (up to float32 rounding: the K/V
    GEMM writes into strided memory)."""
    assert max_diff(runs(2) / "distrifusion", runs(2) / "distrifusion_separate") < EXACT
    assert max_diff(runs(2) / "distrifusion", runs(1) / "single") > 1e-2  # not trivially equal


@pytest.mark.parametrize(
    ("n", "mode"),
    [(2, "distrifusion"), (2, "pcpp"), (3, "distrifusion"), (3, "pcpp"), (4, "pcpp"), (2, "naive")],
)
def test_displaced_modes_differ_from_single(runs, n: int, mode: str) -> None:
    assert max_diff(runs(n) / mode, runs(1) / "single") > 1e-2


@pytest.mark.parametrize("mode", ["distrifusion", "pcpp"])
def test_displaced_modes_are_deterministic(runs, mode: str) -> None:
    a, b = runs(2) / mode, runs(2) / f"{mode}_again"
    assert np.array_equal(latent(a), latent(b))
    image_a = read_run(a / "run.h5").images[0].array
    image_b = read_run(b / "run.h5").images[0].array
    assert np.array_equal(image_a, image_b)


GRAPH_CASES = [(n, name) for n in RUNS for name in RUNS[n] if name.endswith("_graphs")]


@pytest.mark.parametrize(("n", "name"), GRAPH_CASES)
def test_replayed_steps_equal_eager_steps(runs, folders, n: int, name: str) -> None:
    """Steps driven by a recorded step (what a CUDA graph replay does for MPI) give the same
    latent, bit for bit, as steps whose layers call MPI themselves."""
    graphs, eager = runs(n) / name, runs(n) / name.removesuffix("_graphs")
    assert np.array_equal(latent(graphs), latent(eager))
    steps = load_job(BASE, overrides(n, name, folders)).generation.steps
    for rank in range(n):
        attrs = read_rank_attrs(graphs / f"rank-{rank:04d}.h5")
        assert attrs["graphs"] == "emulate"
        # the first call runs eagerly; each variant (step kind, previous kind, parity) is
        # recorded once, at its first use, and every later step replays one
        assert attrs["graph_replays"] == steps - 1
        assert 1 <= attrs["graph_captures"] <= 6
        if steps > 8:
            assert attrs["graph_captures"] < attrs["graph_replays"]


# ---------------------------------------------------------------- bytes on the wire
def _measured(run_dir: Path, rank: int) -> dict[tuple[int, str], tuple[int, int]]:
    table = read_traffic(run_dir / f"rank-{rank:04d}.h5")
    return {(int(r["step"]), str(r["kind"])): (int(r["sent"]), int(r["received"])) for r in table}


def _predicted(plan, rank: int, mode: str) -> dict[tuple[int, str], tuple[int, int]]:
    expected: dict[tuple[int, str], tuple[int, int]] = {}
    steps = plan.job.generation.steps
    for step in range(steps):
        traffic = plan.step_traffic(rank, mode, step)
        for kind in set(traffic.sent) | set(traffic.received):
            expected[(step, kind)] = (traffic.sent.get(kind, 0), traffic.received.get(kind, 0))
    final = plan.final(rank)  # the latent gather and the parallel VAE decode
    for kind in set(final.sent) | set(final.received):
        expected[(steps - 1, kind)] = (final.sent.get(kind, 0), final.received.get(kind, 0))
    return expected


BYTE_CASES = [(n, name) for n in (2, 3, 4, 8) for name in RUNS[n]]


@pytest.mark.parametrize(("n", "name"), BYTE_CASES)
def test_bytes_sent_equal_plan(runs, folders, n: int, name: str) -> None:
    job = load_job(BASE, overrides(n, name, folders))
    plan = make_plan(job, n)
    mode = plan.layout.mode
    for rank in range(n):
        assert _measured(runs(n) / name, rank) == _predicted(plan, rank, mode), f"rank {rank}"


def test_naive_sends_nothing_but_the_final_gather_and_decode(runs) -> None:
    steps = STEPS
    for rank in range(2):
        measured = _measured(runs(2) / "naive", rank)
        kinds = {kind for (_, kind), (sent, _) in measured.items() if sent}
        assert kinds <= {"gather", "decode", "image"}
        assert {step for (step, kind) in measured if kind != "gather"} <= {steps - 1}


def _kv_sent(run_dir: Path, rank: int, step: int) -> int:
    return _measured(run_dir, rank).get((step, "kv"), (0, 0))[0]


def test_pcpp_sends_ratio_of_distrifusion_attention_bytes(runs) -> None:
    """Displaced step 2 (after warm-up): pcpp at 0.3 sends ceil(0.3 rows) per level."""
    plan = make_plan(load_job(BASE, RUNS[2]["pcpp"]), 2)
    for rank, band in enumerate(plan.layout.bands):
        expected_share = sum(
            math.ceil(0.3 * band.rows_at_level(a.level) - 1e-9) * a.inner_dim * (16 >> a.level)
            for a in plan.inventory.attns
        ) / sum(
            band.rows_at_level(a.level) * a.inner_dim * (16 >> a.level)
            for a in plan.inventory.attns
        )
        pcpp = _kv_sent(runs(2) / "pcpp", rank, 2)
        full = _kv_sent(runs(2) / "distrifusion", rank, 2)
        assert full > 0
        assert pcpp / full == pytest.approx(expected_share, rel=1e-12)
        assert 0.3 <= pcpp / full < 0.6


def test_pcpp_share_is_smaller_on_more_ranks(runs) -> None:
    def share(n: int) -> float:
        pcpp = sum(_kv_sent(runs(n) / "pcpp", r, 2) for r in range(n))
        full = sum(_kv_sent(runs(n) / "distrifusion", r, 2) for r in range(n))
        return pcpp / full

    assert share(4) < share(3) < share(2)


# ---------------------------------------------------------------- outputs
def test_run_files_hold_images_and_provenance(runs) -> None:
    run_dir = runs(2) / "pcpp"
    info = read_run(run_dir / "run.h5")
    assert info.status == "complete"
    image = info.images[0].array
    assert image.shape == (160, 128, 3) and image.dtype == np.uint8
    assert (run_dir / "image-0000.png").stat().st_size > 0
    assert info.provenance["n_ranks"] == 2
    assert "Open MPI" in info.provenance["mpi"]["mpi_library"]
    assert load_job(BASE, RUNS[2]["pcpp"]).parallel.mode in info.config_yaml
