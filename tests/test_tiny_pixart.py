"""The built-in ``tiny-pixart`` transformer: loading, the family it picks, its weights file,
a wrong built-in name, its training path, and ``single`` against ``sync`` on 2 MPI ranks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import get_args

import pytest
import torch
from diffusers import PixArtTransformer2DModel
from mpi_launch import REPO
from safetensors import safe_open
from test_distributed import latent
from test_tiny_model import _train_module
from transformer_runs import EXACT, launcher, max_diff

from pcpp_mpi.config import ConfigError, job_from_dict, load_job
from pcpp_mpi.config.schema import BuiltinName, ModelConfig
from pcpp_mpi.families import denoiser_family
from pcpp_mpi.models import (
    BUILTIN_NETWORKS,
    ModelError,
    builtin_weights_provenance,
    load_model,
    transformer_config,
    unet_config,
    vae_config,
    vae_scale_factor,
)
from pcpp_mpi.models.tiny import WEIGHTS_PATH as TINY_WEIGHTS
from pcpp_mpi.models.tiny import load_tiny_modules
from pcpp_mpi.models.tiny_pixart import (
    WEIGHTS_FORMAT,
    WEIGHTS_PATH,
    load_tiny_pixart_modules,
    tiny_pixart_transformer_config,
)
from pcpp_mpi.output.run_file import read_run
from pcpp_mpi.planning import make_plan

MODEL = ModelConfig(builtin="tiny-pixart")
BASE = REPO / "tests" / "data_tiny_pixart.yaml"


def test_builtin_is_a_pixart_transformer_with_the_tiny_vae_and_prompt_encoder() -> None:
    assert denoiser_family(MODEL).name == "pixart"
    assert denoiser_family(ModelConfig(builtin="tiny")).name == "unet"
    config = transformer_config(MODEL)
    assert config == tiny_pixart_transformer_config()
    assert config["out_channels"] == config["in_channels"] == 4  # epsilon, no learned sigma
    assert config["caption_channels"] == 32 and not config["use_additional_conditions"]
    assert config["norm_type"] == "ada_norm_single"
    assert vae_scale_factor(MODEL) == 8 and vae_config(MODEL)["latent_channels"] == 4
    with pytest.raises(ModelError, match="transformer: it has no UNet"):
        unet_config(MODEL)
    bundle = load_model(MODEL, torch.float32, torch.device("cpu"))
    assert isinstance(bundle.denoiser, PixArtTransformer2DModel)
    assert not any(p.requires_grad for p in bundle.denoiser.parameters())
    assert bundle.scheduler_config["prediction_type"] == "epsilon"
    assert bundle.encoder.encode(["a red circle"]).hidden.shape == (1, 16, 32)
    # bands are whole patches: 2 latent rows = 16 px (VAE 8 x patch 2)
    shape = denoiser_family(MODEL).model_shape(MODEL)
    assert shape.vae_scale_factor * 2 ** (shape.levels - 1) == 16


def test_a_wrong_builtin_name_lists_the_valid_ones() -> None:
    assert tuple(BUILTIN_NETWORKS) == get_args(BuiltinName)  # the schema and the loader agree
    with pytest.raises(ConfigError, match="must be one of 'tiny', 'tiny-pixart', got 'tiny-dit'"):
        job_from_dict({"model": {"builtin": "tiny-dit"}})
    with pytest.raises(
        ModelError, match="unknown built-in model 'huge' \\('tiny', 'tiny-pixart'\\)"
    ):
        load_model(ModelConfig(builtin="huge"), torch.float32, torch.device("cpu"))  # type: ignore[arg-type]


def test_weights_file_is_self_contained_float16_with_metadata() -> None:
    assert WEIGHTS_PATH.stat().st_size < 20e6
    with safe_open(str(WEIGHTS_PATH), framework="pt") as handle:
        metadata = handle.metadata()
        keys = list(handle.keys())
        assert {handle.get_tensor(k).dtype for k in keys} == {torch.float16}
    assert {k.split(".")[0] for k in keys} == {"transformer", "vae", "text_encoder"}
    assert metadata["format"] == WEIGHTS_FORMAT and metadata["text_encoder"] == "frozen"
    assert int(metadata["transformer_steps_done"]) > 0 and metadata["torch"]
    assert "--denoiser pixart" in metadata["command"] and metadata["device"] is not None
    accuracy = json.loads(metadata["caption_accuracy"])
    assert accuracy["prompts"] > 0 and all(
        "both" in v for k, v in accuracy.items() if k[0].isdigit()
    )
    origin = json.loads(metadata["initialised_from"])
    assert origin["format"] == "pcpp-mpi-tiny/1"
    # the VAE and text encoder it was trained with are the tiny model's (frozen)
    _, vae, text, _ = load_tiny_pixart_modules()
    _, tiny_vae, tiny_text, tiny_meta = load_tiny_modules(TINY_WEIGHTS)
    assert metadata["vae_scaling_factor"] == tiny_meta["vae_scaling_factor"]
    for mine, theirs in ((vae, tiny_vae), (text, tiny_text)):
        for a, b in zip(mine.state_dict().values(), theirs.state_dict().values(), strict=True):
            assert torch.equal(a, b)
    provenance = builtin_weights_provenance(MODEL)
    assert provenance is not None and provenance["file"] == WEIGHTS_PATH.name
    assert provenance["transformer_steps_done"] == metadata["transformer_steps_done"]


def test_training_script_trains_the_transformer_on_the_frozen_tiny_parts(tmp_path: Path) -> None:
    train = _train_module()
    out = tmp_path / "train"
    args = [
        *("--denoiser", "pixart", "--out", str(out), "--device", "cpu", "--seed", "1"),
        *("--denoiser-steps", "2", "--sizes", "64,80", "--size-weights", "1,1"),
        *("--batch", "2", "--eval-count", "0", "--no-deterministic"),
    ]
    benchmark = torch.backends.cudnn.benchmark
    with torch.random.fork_rng(devices=[]):
        try:
            assert train.main(args) == 0
        finally:
            torch.backends.cudnn.benchmark = benchmark
    _, vae, _, metadata = load_tiny_pixart_modules(out / "tiny-pixart.safetensors")
    assert metadata["transformer_steps_done"] == "2" and metadata["vae_steps_done"] == "0"
    assert (out / "train.log").read_text().count("pixart step") == 1
    _, tiny_vae, _, _ = load_tiny_modules(TINY_WEIGHTS)
    assert torch.equal(vae.encoder.conv_in.weight, tiny_vae.encoder.conv_in.weight)
    with pytest.raises(SystemExit, match="not a multiple of 16"):
        train.main(["--denoiser", "pixart", "--out", str(out), "--sizes", "72,64"])


@pytest.fixture(scope="module")
def tiny_pixart_runs(tmp_path_factory: pytest.TempPathFactory):
    runs = {1: {"single": []}, 2: {"sync": [], "pcpp": ["parallel.mode=pcpp"]}}
    return launcher(tmp_path_factory.mktemp("tiny_pixart"), BASE, None, runs)


@pytest.mark.mpi
def test_single_makes_an_image_and_two_rank_sync_equals_it(tiny_pixart_runs) -> None:
    single = tiny_pixart_runs(1) / "single"
    info = read_run(single / "run.h5")
    assert info.images[0].array.shape == (80, 64, 3) and info.images[0].array.std() > 5
    assert info.provenance["model_family"] == "pixart"
    assert info.provenance["model_weights"]["file"] == WEIGHTS_PATH.name
    assert load_job(BASE).model.builtin == "tiny-pixart"
    assert abs(latent(single)).max() > 0.5
    assert max_diff(tiny_pixart_runs(2) / "sync", single) < EXACT
    # the comparison is meaningful: pcpp's stale neighbours do move the latent
    assert max_diff(tiny_pixart_runs(2) / "pcpp", single) > 1e-3


def test_job_file_plans_bands_of_whole_patches() -> None:
    job = load_job(REPO / "jobs" / "tiny-pixart.yaml")
    assert job.model.builtin == "tiny-pixart"
    for n in (2, 3, 4):
        layout = make_plan(job, n).layout
        assert layout.unit * layout.vae_scale_factor == 16
        assert sum(band.stop - band.start for band in layout.bands) == 256 // 8
