"""Tests of the trained built-in tiny model: its weights file, loader, prompt encoder,
structure, tools/train_tiny.py and (coarsely) whether its images match their captions."""

from __future__ import annotations

import importlib.util
import json
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from pcpp_mpi.models import ModelBundle, ModelError
from pcpp_mpi.models.tiny import (
    WEIGHTS_FORMAT,
    WEIGHTS_PATH,
    load_tiny,
    load_tiny_modules,
    read_metadata,
    tiny_unet_config,
    tiny_vae_config,
    tiny_vae_scale_factor,
)
from pcpp_mpi.models.tiny_vocab import vocab_fingerprint
from pcpp_mpi.parallel.inventory import is_self_attention
from pcpp_mpi.shapes.checker import accuracy, check_caption
from pcpp_mpi.shapes.sampling import generate
from pcpp_mpi.shapes.scenes import evaluation_prompts

REPO = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny() -> ModelBundle:
    return load_tiny(torch.float32, CPU)


def _states(bundle: ModelBundle) -> list[dict[str, torch.Tensor]]:
    return [
        bundle.denoiser.state_dict(),
        bundle.vae.state_dict(),
        bundle.encoder.encoder.state_dict(),  # type: ignore[attr-defined]
    ]


# -- the committed weights ------------------------------------------------------------------


def test_weights_are_committed_small_and_shipped_as_package_data() -> None:
    assert WEIGHTS_PATH.is_file()
    assert WEIGHTS_PATH.stat().st_size <= 20 * 1024 * 1024
    assert WEIGHTS_PATH.is_relative_to(REPO / "pcpp_mpi")
    metadata = read_metadata()
    assert metadata["format"] == WEIGHTS_FORMAT
    assert metadata["vocab_fingerprint"] == vocab_fingerprint()
    assert int(metadata["unet_steps_done"]) > 0
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["pcpp_mpi"]
    relative = WEIGHTS_PATH.relative_to(REPO / "pcpp_mpi")
    assert any(relative.match(pattern) for pattern in patterns)


def test_tiny_loads_bitwise_identically_twice(tiny: ModelBundle) -> None:
    again = load_tiny(torch.float32, CPU)
    for ours, theirs in zip(_states(tiny), _states(again), strict=True):
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    prompts = ["a red circle at the top left on a blue background", ""]
    assert torch.equal(tiny.encoder.encode(prompts).hidden, again.encoder.encode(prompts).hidden)


def test_loaded_weights_are_the_files_float16_values(tiny: ModelBundle) -> None:
    stored = load_file(str(WEIGHTS_PATH))
    assert all(t.dtype == torch.float16 for t in stored.values())
    weight = tiny.denoiser.state_dict()["conv_in.weight"]
    assert weight.dtype == torch.float32
    assert torch.equal(weight, stored["unet.conv_in.weight"].float())


# -- what the engine relies on --------------------------------------------------------------


def test_tiny_structure_fits_the_engine(tiny: ModelBundle) -> None:
    unet = tiny.denoiser
    assert isinstance(unet, UNet2DConditionModel)
    assert len(unet.config.block_out_channels) >= 3
    assert unet.config.mid_block_type == "UNetMidBlock2DCrossAttn"
    assert any(is_self_attention(m) for m in unet.modules())
    assert any(isinstance(m, torch.nn.GroupNorm) for m in unet.modules())
    convs = [m for m in unet.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.padding_mode == "zeros" for c in convs)
    assert dict(unet.config) == {**dict(unet.config), **tiny_unet_config()}
    assert tiny.vae_scale_factor == tiny_vae_scale_factor() == 8
    assert tiny.vae.config.scaling_factor == pytest.approx(
        float(read_metadata()["vae_scaling_factor"])
    )
    assert tiny_vae_config()["scaling_factor"] == tiny.vae.config.scaling_factor
    assert not any(p.requires_grad for p in unet.parameters())
    with torch.no_grad():
        latent = torch.randn(1, 4, 5, 7, generator=torch.Generator().manual_seed(0))
        image = tiny.vae.decode(latent / tiny.vae.config.scaling_factor).sample
    assert image.shape == (1, 3, 40, 56)


def test_prompt_encoder_contract(tiny: ModelBundle) -> None:
    prompts = ["a red circle at the top left", "a blue square in the center", "", "a cat"]
    out = tiny.encoder.encode(prompts)
    assert out.hidden.shape == (4, 16, 32)
    assert out.hidden.dtype == torch.float32 and out.hidden.device == CPU
    assert out.pooled is None
    assert torch.isfinite(out.hidden).all()
    alone = tiny.encoder.encode([prompts[1]]).hidden[0]
    assert torch.equal(out.hidden[1], alone)  # independent of the batch
    assert not torch.allclose(out.hidden[0], out.hidden[1])
    shouted = tiny.encoder.encode(["A RED circle, at the top left!"]).hidden[0]
    assert torch.equal(shouted, out.hidden[0])
    with pytest.raises(TypeError):
        tiny.encoder.encode("a red circle")  # type: ignore[arg-type]


def test_bfloat16_copy_rounds_the_same_weights() -> None:
    half = load_tiny(torch.bfloat16, CPU)
    assert half.denoiser.dtype == torch.bfloat16 and half.vae.dtype == torch.bfloat16
    full = load_tiny_modules()[0].state_dict()["conv_in.weight"]
    assert torch.equal(half.denoiser.state_dict()["conv_in.weight"], full.bfloat16())


def test_loader_refuses_missing_foreign_and_stale_files(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        load_tiny_modules(tmp_path / "none.safetensors")
    tensors = load_file(str(WEIGHTS_PATH))
    with safe_open(str(WEIGHTS_PATH), framework="pt") as handle:
        metadata = dict(handle.metadata())
    foreign = tmp_path / "foreign.safetensors"
    save_file(tensors, str(foreign), metadata={**metadata, "format": "other"})
    with pytest.raises(ModelError, match="not a tiny-model"):
        load_tiny_modules(foreign)
    stale = tmp_path / "stale.safetensors"
    save_file(tensors, str(stale), metadata={**metadata, "vocab_fingerprint": "0" * 16})
    with pytest.raises(ModelError, match="vocabulary"):
        load_tiny_modules(stale)
    config = json.loads(metadata["unet_config"])
    config["block_out_channels"] = [8, 8, 8]
    other = tmp_path / "other.safetensors"
    save_file(tensors, str(other), metadata={**metadata, "unet_config": json.dumps(config)})
    with pytest.raises(ModelError, match="unet_config"):
        load_tiny_modules(other)


# -- training script ------------------------------------------------------------------------


def _train_module():
    spec = importlib.util.spec_from_file_location("train_tiny", REPO / "tools" / "train_tiny.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("train_tiny", module)
    spec.loader.exec_module(module)
    return module


def test_training_script_runs_three_cpu_steps(tmp_path: Path) -> None:
    train = _train_module()
    out = tmp_path / "train"
    args = [
        *("--out", str(out), "--device", "cpu", "--seed", "1"),
        *("--vae-steps", "3", "--unet-steps", "3", "--sizes", "64", "--size-weights", "1"),
        *("--batch", "2", "--vae-batch", "2", "--measure-count", "2", "--eval-count", "0"),
        "--no-deterministic",
    ]
    benchmark = torch.backends.cudnn.benchmark
    with torch.random.fork_rng(devices=[]):
        try:
            assert train.main(args) == 0
        finally:
            torch.backends.cudnn.benchmark = benchmark
    *_, metadata = load_tiny_modules(out / "tiny.safetensors")
    assert metadata["unet_steps_done"] == "3" and metadata["vae_steps_done"] == "3"
    assert float(metadata["vae_scaling_factor"]) > 0
    assert (out / "train.log").read_text().count("unet step") == 1
    assert (out / "vae.png").is_file()


def test_training_token_ids_equal_the_tokenized_captions() -> None:
    from pcpp_mpi.models.tiny_text import WordTokenizer
    from pcpp_mpi.shapes.scenes import sample_scenes, training_captions
    from pcpp_mpi.shapes.training_tokens import training_token_ids

    tokenizer = WordTokenizer()
    scenes = sample_scenes(500, np.random.default_rng(0))
    a, b = np.random.default_rng(9), np.random.default_rng(9)
    expected = tokenizer(training_captions(scenes, a))
    assert torch.equal(expected, training_token_ids(scenes, b, tokenizer))
    assert a.random() == b.random()


# -- the images match their captions --------------------------------------------------------


def test_generations_at_the_training_size_match_their_captions_above_chance(
    tiny: ModelBundle,
) -> None:
    """18 fixed prompts (every grid cell twice) at 64 px, the training size, on one device,
    20 DDIM steps, CFG 5 (what ``pcpp-mpi run`` in mode single computes).

    Chance is 1/10 for the colour and 1/90 for colour and cell together (2 or more of 18 by
    chance: under 2%); the committed model gets 17/18 colours and 7/18 both
    (docs/TINY_MODEL.md has the 36-prompt figures).
    """
    prompts = evaluation_prompts(18)
    images = generate(tiny, prompts, list(range(18)), 64, 64, steps=20, guidance_scale=5.0)
    result = accuracy(check_caption(image, p) for image, p in zip(images, prompts, strict=True))
    assert result.colour >= 0.75
    assert result.both >= 2 / 18
