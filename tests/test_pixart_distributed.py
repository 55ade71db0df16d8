"""The exactness invariants and byte accounting for a PixArt transformer, on real MPI ranks.

A tiny PixArt-alpha folder (T5 text side with its attention mask, size conditioning, learned
sigma) is written once; each rank count is launched once (``tests/mpi_driver.py``) and runs
its jobs through ``run_job``, the path of ``pcpp-mpi run``. The job's latent has 11 patch rows,
so bands are unequal on 2, 3 and 4 ranks. "Equal" is ``EXACT`` = 1e-4 on latents of |x| ~ 18
(float32 rounding); ``naive`` (no exchange) and the displaced modes (stale K/V) are off by
more than 1e-2 (``test_the_comparisons_are_meaningful``).
"""

from __future__ import annotations

import numpy as np
import pytest
from mpi_launch import REPO
from pixart_folder import make_pixart_folder
from test_distributed import latent
from transformer_runs import (
    BYTE_CASES,
    EXACT,
    Runs,
    check_bytes_sent_equal_plan,
    check_compiled_steps_equal_uncompiled_ones,
    check_replayed_steps_equal_eager_ones,
    check_warm_displaced_modes_equal_single,
    launcher,
    max_diff,
)

pytestmark = pytest.mark.mpi

BASE = REPO / "tests" / "data_pixart_exact.yaml"


@pytest.fixture(scope="session")
def pixart_folder(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(make_pixart_folder(tmp_path_factory.mktemp("pixart_folder") / "pixart"))


@pytest.fixture(scope="session")
def pixart_runs(tmp_path_factory: pytest.TempPathFactory, pixart_folder: str) -> Runs:
    """``pixart_runs(n)`` -> the directory holding every run of the ``n``-rank launch."""
    return launcher(tmp_path_factory.mktemp("pixart_distributed"), BASE, pixart_folder)


def test_the_comparisons_are_meaningful(pixart_runs) -> None:
    single = pixart_runs(1) / "single"
    assert np.abs(latent(single)).max() > 1.0
    assert max_diff(pixart_runs(2) / "naive", single) > 1e-2
    for mode in ("distrifusion", "pcpp"):
        assert max_diff(pixart_runs(2) / mode, single) > 1e-2, mode


@pytest.mark.parametrize("n", [2, 3, 4])
def test_sync_equals_single(pixart_runs, n: int) -> None:
    assert max_diff(pixart_runs(n) / "sync", pixart_runs(1) / "single") < EXACT


def test_cfg_parallel_sync_equals_single(pixart_runs) -> None:
    """Two CFG groups of one band each: paired ranks swap their noise predictions."""
    assert max_diff(pixart_runs(2) / "cfg_sync", pixart_runs(1) / "single") < EXACT
    # 2 bands x 2 CFG groups in the displaced mode: runs, and its bytes match the plan below
    assert max_diff(pixart_runs(4) / "cfg_pcpp", pixart_runs(1) / "single") > 1e-2


def test_all_warm_displaced_modes_equal_single(pixart_runs: Runs) -> None:
    check_warm_displaced_modes_equal_single(pixart_runs)


@pytest.mark.parametrize("mode", ["distrifusion", "pcpp"])
def test_replayed_displaced_steps_equal_eager_ones(pixart_runs: Runs, mode: str) -> None:
    """The displaced modes are deterministic: driven by a recorded step (what a CUDA graph
    replay does for MPI), the latent is the eager run's bit for bit."""
    check_replayed_steps_equal_eager_ones(pixart_runs, mode)


def test_compiled_steps_equal_uncompiled_ones(pixart_runs: Runs) -> None:
    """``torch.compile`` (aot_eager: traced, exchanges as custom operators) of the banded
    transformer: ``sync`` equals one rank, ``pcpp`` the uncompiled ``pcpp``."""
    check_compiled_steps_equal_uncompiled_ones(pixart_runs)


@pytest.mark.parametrize(("n", "name"), BYTE_CASES)
def test_bytes_sent_equal_plan(pixart_runs: Runs, pixart_folder: str, n: int, name: str) -> None:
    check_bytes_sent_equal_plan(pixart_runs, BASE, pixart_folder, n, name)
