"""What the transformer families' distributed tests share (``tests/test_pixart_distributed.py``,
``tests/test_sd3_distributed.py``): the runs of each rank count, launching them once, and
the checks that read alike for every transformer.

A family's test file builds its tiny folder, names its job file and keeps the checks whose
bounds are its own (how far ``naive`` and the displaced modes are off).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from mpi_launch import REPO, mpirun
from test_distributed import _measured, _predicted, latent

from pcpp_mpi.config import load_job
from pcpp_mpi.output.rank_file import read_rank_attrs
from pcpp_mpi.planning import make_plan

#: "equal" latents differ by less than this (float32 rounding)
EXACT = 1e-4
STEPS = 5
COMPILED = ["runtime.compile=true", "runtime.compile_backend=aot_eager"]
WARM = f"parallel.warmup_steps={STEPS}"

#: every launch's runs: rank count -> run name -> ``--set`` overrides
RUNS: dict[int, dict[str, list[str]]] = {
    1: {"single": []},
    2: {
        "sync": [],
        "cfg_sync": ["parallel.cfg_parallel=true"],
        "distrifusion_warm": ["parallel.mode=distrifusion", WARM],
        "pcpp_r1_warm": ["parallel.mode=pcpp", "parallel.ratio=1.0", WARM],
        "distrifusion": ["parallel.mode=distrifusion"],
        "distrifusion_graphs": ["parallel.mode=distrifusion", "runtime.graphs=emulate"],
        "pcpp": ["parallel.mode=pcpp"],
        "pcpp_graphs": ["parallel.mode=pcpp", "runtime.graphs=emulate"],
        "naive": ["parallel.mode=naive"],
        "sync_compiled": COMPILED,
        "pcpp_compiled": ["parallel.mode=pcpp", *COMPILED],
    },
    3: {"sync": []},
    4: {"sync": [], "cfg_pcpp": ["parallel.cfg_parallel=true", "parallel.mode=pcpp"]},
}

#: every ``(rank count, run)`` whose bytes are checked against the plan
BYTE_CASES = [(n, name) for n in (2, 3, 4) for name in RUNS[n]]

#: ``runs(n)`` -> the directory holding every run of the ``n``-rank launch
Runs = Callable[[int], Path]


def overrides(n: int, name: str, folder: str) -> list[str]:
    """The overrides of run ``name`` of the ``n``-rank launch, on the model folder ``folder``."""
    return ["model.builtin=null", f"model.path={folder}", *RUNS[n][name]]


def launcher(
    root: Path,
    base: Path,
    folder: str | None,
    runs: dict[int, dict[str, list[str]]] = RUNS,
) -> Runs:
    """``runs(n)``: launches the ``n``-rank runs of job file ``base`` (``runs[n]``, by
    default :data:`RUNS`) on the model folder ``folder`` (``None``: the job's own model) once
    (``tests/mpi_driver.py``, written under ``root``) and returns their directory."""
    done: dict[int, Path] = {}

    def get(n: int) -> Path:
        if n not in done:
            out = root / f"np{n}"
            spec = root / f"np{n}.json"
            jobs = {
                name: overrides(n, name, folder) if folder is not None else list(settings)
                for name, settings in runs[n].items()
            }
            spec.write_text(json.dumps({"base": str(base), "out": str(out), "runs": jobs}))
            result = mpirun(n, [sys.executable, str(REPO / "tests" / "mpi_driver.py"), str(spec)])
            assert result.returncode == 0, result.stderr[-5000:]
            done[n] = out
        return done[n]

    return get


def max_diff(a: Path, b: Path) -> float:
    return float(np.abs(latent(a) - latent(b)).max())


def check_warm_displaced_modes_equal_single(runs: Runs) -> None:
    """Displaced modes warmed up for every step are ``sync``: equal to one rank."""
    single = runs(1) / "single"
    assert max_diff(runs(2) / "distrifusion_warm", single) < EXACT
    assert max_diff(runs(2) / "pcpp_r1_warm", single) < EXACT


def check_replayed_steps_equal_eager_ones(runs: Runs, mode: str) -> None:
    """``mode`` driven by a recorded step (CUDA graphs emulated) equals it eager, bit for
    bit, with every step after the first replayed."""
    graphs, eager = runs(2) / f"{mode}_graphs", runs(2) / mode
    assert np.array_equal(latent(graphs), latent(eager))
    for rank in range(2):
        attrs = read_rank_attrs(graphs / f"rank-{rank:04d}.h5")
        assert attrs["graphs"] == "emulate" and attrs["graph_replays"] == STEPS - 1


def check_compiled_steps_equal_uncompiled_ones(runs: Runs) -> None:
    """Compiled ``sync`` equals one rank, compiled ``pcpp`` the uncompiled ``pcpp``; each
    compiled the phases it runs."""
    assert max_diff(runs(2) / "sync_compiled", runs(1) / "single") < EXACT
    assert max_diff(runs(2) / "pcpp_compiled", runs(2) / "pcpp") < EXACT
    for name, phases in (("sync_compiled", "fresh"), ("pcpp_compiled", "stale")):
        for rank in range(2):
            attrs = read_rank_attrs(runs(2) / name / f"rank-{rank:04d}.h5")
            assert attrs["compiled_phases"] == phases, (name, rank)


def check_bytes_sent_equal_plan(runs: Runs, base: Path, folder: str, n: int, name: str) -> None:
    """Every rank's bytes of run ``name`` are the plan's, step by step and kind by kind."""
    plan = make_plan(load_job(base, overrides(n, name, folder)), n)
    for rank in range(n):
        measured = _measured(runs(n) / name, rank)
        assert measured == _predicted(plan, rank, plan.layout.mode), f"rank {rank}"
