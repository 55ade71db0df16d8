"""The exactness invariants and byte accounting for an SD3 transformer, on real MPI ranks.

A tiny SD3 folder (two CLIPs and a T5, SD3.5's dual attention and RMS qk norms, SD3's VAE
shape, flow-matching Euler) is written once; each rank count is launched once
(``tests/mpi_driver.py``) and runs its jobs through ``run_job``, the path of ``pcpp-mpi
run``. The job's latent has 11 patch rows, so bands are unequal on 2, 3 and 4 ranks. "Equal"
is ``EXACT`` = 1e-4 on latents of |x| ~ 4.5 (float32 rounding); ``naive`` (no exchange) and
the displaced modes (stale K/V) are off by more (``test_the_comparisons_are_meaningful``).
``single`` itself equals diffusers' ``StableDiffusion3Pipeline``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mpi_launch import REPO
from sd3_folder import make_sd3_folder
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
    overrides,
)

from pcpp_mpi.config import load_job

pytestmark = pytest.mark.mpi

BASE = REPO / "tests" / "data_sd3_exact.yaml"


@pytest.fixture(scope="session")
def sd3_folder(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(make_sd3_folder(tmp_path_factory.mktemp("sd3_folder") / "sd3"))


@pytest.fixture(scope="session")
def sd3_runs(tmp_path_factory: pytest.TempPathFactory, sd3_folder: str) -> Runs:
    """``sd3_runs(n)`` -> the directory holding every run of the ``n``-rank launch."""
    return launcher(tmp_path_factory.mktemp("sd3_distributed"), BASE, sd3_folder)


def test_single_equals_the_diffusers_pipeline(sd3_runs, sd3_folder: str) -> None:
    """One rank's latent is diffusers' ``StableDiffusion3Pipeline``'s (same prompt, negative
    prompt, seed, steps, guidance; CLIP + T5 text side, flow-matching Euler)."""
    from diffusers import StableDiffusion3Pipeline
    from transformers import T5TokenizerFast

    job = load_job(BASE, overrides(1, "single", sd3_folder))
    generation = job.generation
    pipe = StableDiffusion3Pipeline.from_pretrained(
        sd3_folder,
        local_files_only=True,
        feature_extractor=None,
        image_encoder=None,
        tokenizer_3=T5TokenizerFast.from_pretrained(f"{sd3_folder}/tokenizer_3"),
    )
    expected = pipe(
        generation.prompts[0],
        negative_prompt=generation.negative_prompts[0],
        height=generation.height,
        width=generation.width,
        num_inference_steps=generation.steps,
        guidance_scale=generation.guidance_scale,
        generator=torch.Generator("cpu").manual_seed(generation.seed),
        output_type="latent",
    ).images[0]
    ours = latent(sd3_runs(1) / "single")
    assert np.abs(ours - expected.numpy()).max() < EXACT
    assert np.abs(ours).max() > 1.0


def test_the_comparisons_are_meaningful(sd3_runs) -> None:
    single = sd3_runs(1) / "single"
    assert max_diff(sd3_runs(2) / "naive", single) > 1e-2
    for mode in ("distrifusion", "pcpp"):
        assert max_diff(sd3_runs(2) / mode, single) > 1e-3, mode


@pytest.mark.parametrize("n", [2, 3, 4])
def test_sync_equals_single(sd3_runs, n: int) -> None:
    assert max_diff(sd3_runs(n) / "sync", sd3_runs(1) / "single") < EXACT


def test_cfg_parallel_sync_equals_single(sd3_runs) -> None:
    """Two CFG groups of one band each: paired ranks swap their velocity predictions."""
    assert max_diff(sd3_runs(2) / "cfg_sync", sd3_runs(1) / "single") < EXACT
    # 2 bands x 2 CFG groups in the displaced mode: runs, and its bytes match the plan below
    assert max_diff(sd3_runs(4) / "cfg_pcpp", sd3_runs(1) / "single") > 1e-3


def test_all_warm_displaced_modes_equal_single(sd3_runs: Runs) -> None:
    check_warm_displaced_modes_equal_single(sd3_runs)


@pytest.mark.parametrize("mode", ["distrifusion", "pcpp"])
def test_replayed_displaced_steps_equal_eager_ones(sd3_runs: Runs, mode: str) -> None:
    """The displaced modes are deterministic: driven by a recorded step (what a CUDA graph
    replay does for MPI), the latent is the eager run's bit for bit."""
    check_replayed_steps_equal_eager_ones(sd3_runs, mode)


def test_compiled_steps_equal_uncompiled_ones(sd3_runs: Runs) -> None:
    """``torch.compile`` (aot_eager: traced, the joint attention behind its custom operator)
    of the banded transformer: ``sync`` equals one rank, ``pcpp`` the uncompiled ``pcpp``."""
    check_compiled_steps_equal_uncompiled_ones(sd3_runs)


@pytest.mark.parametrize(("n", "name"), BYTE_CASES)
def test_bytes_sent_equal_plan(sd3_runs: Runs, sd3_folder: str, n: int, name: str) -> None:
    check_bytes_sent_equal_plan(sd3_runs, BASE, sd3_folder, n, name)
