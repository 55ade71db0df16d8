"""Tests of pcpp_mpi.models: the tiny model, random SD architectures and local folders."""

from __future__ import annotations

import re
import shutil
import socket
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from model_folder import TEXT_DIM, make_model_folder

from pcpp_mpi.config.schema import ModelConfig
from pcpp_mpi.families.unet import added_cond_kwargs
from pcpp_mpi.models import (
    ModelBundle,
    ModelError,
    check_model_folder,
    load_model,
    unet_config,
    vae_scale_factor,
)
from pcpp_mpi.models.random_arch import arch_prompt_encoder, build_random, measurement_model
from pcpp_mpi.models.tiny import tiny_unet_config

CPU = torch.device("cpu")
TINY = ModelConfig(builtin="tiny")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any attempt to open a network connection."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def tiny() -> ModelBundle:
    return load_model(TINY, torch.float32, CPU)


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model_folder(tmp_path_factory.mktemp("models") / "sd", kind="sd")


@pytest.fixture(scope="module")
def sdxl_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model_folder(tmp_path_factory.mktemp("models") / "sdxl", kind="sdxl")


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / folder.name))


# -- built-in tiny model -------------------------------------------------------------------


def test_tiny_builds_bitwise_identical_without_touching_global_rng(tiny: ModelBundle) -> None:
    rng = torch.random.get_rng_state()
    again = load_model(TINY, torch.float32, CPU)
    assert torch.equal(rng, torch.random.get_rng_state())
    for module, other in ((tiny.denoiser, again.denoiser), (tiny.vae, again.vae)):
        ours, theirs = module.state_dict(), other.state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_tiny_structure(tiny: ModelBundle) -> None:
    config = tiny.denoiser.config
    assert len(config.block_out_channels) >= 3
    assert config.layers_per_block == 1
    assert sum(t.startswith("CrossAttn") for t in config.down_block_types) >= 2
    assert sum(t.startswith("CrossAttn") for t in config.up_block_types) >= 2
    assert config.mid_block_type == "UNetMidBlock2DCrossAttn"
    assert config.use_linear_projection and config.cross_attention_dim == 32
    assert config.addition_embed_type is None
    groups = {m.num_groups for m in tiny.denoiser.modules() if isinstance(m, torch.nn.GroupNorm)}
    assert groups == {config.norm_num_groups}
    assert tiny.vae_scale_factor == 8 == vae_scale_factor(TINY)
    assert tiny.vae.config.latent_channels == 4
    assert not any(p.requires_grad for p in tiny.denoiser.parameters())
    assert tiny.scheduler_config["prediction_type"] == "epsilon"
    assert tiny.scheduler_config["steps_offset"] == 1
    assert tiny.scheduler_config["set_alpha_to_one"] is False


def test_tiny_unet_config_matches_built_unet(tiny: ModelBundle) -> None:
    config = unet_config(TINY)
    built = {k: tuple(v) if isinstance(v, list) else v for k, v in tiny.denoiser.config.items()}
    assert {k: built[k] for k in config} == config


def test_tiny_unet_forward_shape(tiny: ModelBundle) -> None:
    latent = torch.randn(2, 4, 16, 24, generator=torch.Generator().manual_seed(0))
    text = tiny.encoder.encode(["a cat", "a dog"])
    with torch.no_grad():
        out = tiny.denoiser(latent, 500, encoder_hidden_states=text.hidden).sample
    assert out.shape == (2, 4, 16, 24)
    assert torch.isfinite(out).all()


def test_tiny_vae_decodes_to_pixels(tiny: ModelBundle) -> None:
    with torch.no_grad():
        image = tiny.vae.decode(torch.randn(1, 4, 2, 3)).sample
    assert image.shape == (1, 3, 16, 24)


def test_tiny_other_dtype_rounds_the_same_weights() -> None:
    half = load_model(TINY, torch.bfloat16, CPU)
    full = load_model(TINY, torch.float32, CPU)
    assert half.denoiser.dtype == torch.bfloat16
    weight = "conv_in.weight"
    assert torch.equal(
        half.denoiser.state_dict()[weight], full.denoiser.state_dict()[weight].bfloat16()
    )


def test_prompt_encoder_is_deterministic_and_prompt_dependent(tiny: ModelBundle) -> None:
    first = tiny.encoder.encode(["a cat", "a dog", ""])
    second = tiny.encoder.encode(["a dog"])
    assert first.hidden.shape == (3, 16, 32)
    assert first.hidden.dtype == torch.float32 and first.hidden.device == CPU
    assert first.pooled is None
    assert torch.equal(first.hidden[1], second.hidden[0])
    assert not torch.allclose(first.hidden[0], first.hidden[1])
    assert torch.equal(
        load_model(TINY, torch.float32, CPU).encoder.encode(["a cat"]).hidden[0], first.hidden[0]
    )
    with pytest.raises(TypeError):
        tiny.encoder.encode("a cat")  # type: ignore[arg-type]


def test_added_cond_kwargs_is_none_for_tiny(tiny: ModelBundle) -> None:
    assert added_cond_kwargs(tiny.denoiser, None, 160, 160) is None


# -- random-weight architectures --------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "levels", "cross_dim", "addition"),
    [("sd15", 4, 768, None), ("sd21", 4, 1024, None), ("sdxl", 3, 2048, "text_time")],
)
def test_arch_unet_config(arch: str, levels: int, cross_dim: int, addition: str | None) -> None:
    model = ModelConfig(arch=arch, weights="random")  # type: ignore[arg-type]
    config = unet_config(model)
    assert len(config["block_out_channels"]) == levels
    assert config["block_out_channels"][0] == 320
    assert config["cross_attention_dim"] == cross_dim
    assert config["addition_embed_type"] == addition
    assert config["in_channels"] == config["out_channels"] == 4
    assert vae_scale_factor(model) == 8


def test_arch_config_details() -> None:
    sd15 = unet_config(ModelConfig(arch="sd15", weights="random"))
    sd21 = unet_config(ModelConfig(arch="sd21", weights="random"))
    sdxl = unet_config(ModelConfig(arch="sdxl", weights="random"))
    assert sd15["attention_head_dim"] == 8 and not sd15["use_linear_projection"]
    assert sd21["attention_head_dim"] == (5, 10, 20, 20) and sd21["use_linear_projection"]
    assert sdxl["transformer_layers_per_block"] == (1, 2, 10)
    assert sdxl["down_block_types"] == (
        "DownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
    )
    assert sdxl["attention_head_dim"] == (5, 10, 20)
    assert sdxl["addition_time_embed_dim"] == 256
    assert sdxl["projection_class_embeddings_input_dim"] == 6 * 256 + 1280


def test_arch_prompt_encoders() -> None:
    for arch, dim in (("sd15", 768), ("sd21", 1024)):
        emb = arch_prompt_encoder(arch, seed=0).encode(["a", "b"])
        assert emb.hidden.shape == (2, 77, dim) and emb.pooled is None
    emb = arch_prompt_encoder("sdxl", seed=0).encode(["a", "b"])
    assert emb.hidden.shape == (2, 77, 2048)
    assert emb.pooled is not None and emb.pooled.shape == (2, 1280)
    assert 0.9 < emb.hidden.std().item() < 1.1
    other = arch_prompt_encoder("sdxl", seed=1).encode(["a"])
    assert not torch.allclose(other.hidden[0], emb.hidden[0])


def test_build_random_is_seeded_and_initialised() -> None:
    rng = torch.random.get_rng_state()
    config = tiny_unet_config()
    one = build_random(UNet2DConditionModel, config, 3, torch.bfloat16, CPU)
    two = build_random(UNet2DConditionModel, config, 3, torch.bfloat16, CPU)
    three = build_random(UNet2DConditionModel, config, 4, torch.bfloat16, CPU)
    assert torch.equal(rng, torch.random.get_rng_state())
    assert one.dtype == torch.bfloat16 and one.device == CPU
    ones, twos, threes = one.state_dict(), two.state_dict(), three.state_dict()
    assert all(torch.equal(ones[k], twos[k]) for k in ones)
    assert not torch.equal(ones["conv_in.weight"], threes["conv_in.weight"])
    assert all(torch.isfinite(t).all() for t in ones.values())
    fan_in = config["in_channels"] * 9
    assert ones["conv_in.weight"].abs().max() <= fan_in**-0.5
    assert torch.equal(ones["conv_norm_out.weight"], torch.ones_like(ones["conv_norm_out.weight"]))


# -- local diffusers folders ------------------------------------------------------------


@pytest.mark.usefixtures("no_network")
def test_folder_loads_offline(sd_folder: Path) -> None:
    model = ModelConfig(path=str(sd_folder))
    check_model_folder(str(sd_folder))
    bundle = load_model(model, torch.float32, CPU)
    emb = bundle.encoder.encode(["a cat"])
    assert emb.hidden.shape == (1, 77, TEXT_DIM) and emb.pooled is None
    assert emb.hidden.dtype == torch.float32 and emb.hidden.device == CPU
    assert torch.equal(emb.hidden, bundle.encoder.encode(["a cat"]).hidden)
    assert not torch.allclose(emb.hidden, bundle.encoder.encode(["a dog"]).hidden)
    assert bundle.vae_scale_factor == 8 == vae_scale_factor(model)
    assert bundle.scheduler_config["_class_name"] == "DDIMScheduler"
    assert added_cond_kwargs(bundle.denoiser, emb.pooled, 64, 64) is None
    config = unet_config(model)
    assert config["cross_attention_dim"] == bundle.denoiser.config.cross_attention_dim == TEXT_DIM
    assert config["block_out_channels"] == tuple(bundle.denoiser.config.block_out_channels)
    with torch.no_grad():
        out = bundle.denoiser(torch.randn(1, 4, 8, 8), 10, encoder_hidden_states=emb.hidden).sample
    assert out.shape == (1, 4, 8, 8)


@pytest.mark.usefixtures("no_network")
def test_sdxl_folder_has_pooled_embeddings_and_time_ids(sdxl_folder: Path) -> None:
    bundle = load_model(ModelConfig(path=str(sdxl_folder)), torch.float32, CPU)
    emb = bundle.encoder.encode(["a cat", "a dog"])
    assert emb.hidden.shape == (2, 77, 2 * TEXT_DIM)
    assert emb.pooled is not None and emb.pooled.shape == (2, TEXT_DIM)
    extra = added_cond_kwargs(bundle.denoiser, emb.pooled, 96, 128)
    assert extra is not None
    assert extra["text_embeds"].shape == (2, TEXT_DIM)
    assert extra["time_ids"].tolist() == [[96, 128, 0, 0, 96, 128]] * 2
    with torch.no_grad():
        out = bundle.denoiser(
            torch.randn(2, 4, 12, 16), 10, encoder_hidden_states=emb.hidden, added_cond_kwargs=extra
        ).sample
    assert out.shape == (2, 4, 12, 16)
    with pytest.raises(ModelError, match="pooled"):
        added_cond_kwargs(bundle.denoiser, None, 96, 128)


def test_folder_missing_component_is_named(sd_folder: Path, tmp_path: Path) -> None:
    folder = _copy(sd_folder, tmp_path)
    shutil.rmtree(folder / "vae")
    with pytest.raises(ModelError, match=r"missing vae/") as info:
        check_model_folder(str(folder))
    assert str(folder) in str(info.value)
    with pytest.raises(ModelError, match=r"missing vae/"):
        load_model(ModelConfig(path=str(folder)), torch.float32, CPU)


def test_folder_missing_files_are_all_listed(sd_folder: Path, tmp_path: Path) -> None:
    folder = _copy(sd_folder, tmp_path)
    (folder / "unet" / "config.json").unlink()
    (folder / "scheduler" / "scheduler_config.json").unlink()
    for file in (folder / "text_encoder").glob("*.safetensors"):
        file.unlink()
    with pytest.raises(ModelError) as info:
        check_model_folder(str(folder))
    message = str(info.value)
    assert "unet/config.json" in message
    assert "scheduler/scheduler_config.json" in message
    assert "text_encoder/ weights" in message
    assert "vae" not in message


def test_sdxl_folder_needs_second_text_encoder(sdxl_folder: Path, tmp_path: Path) -> None:
    folder = _copy(sdxl_folder, tmp_path)
    shutil.rmtree(folder / "text_encoder_2")
    with pytest.raises(ModelError, match="text_encoder_2"):
        check_model_folder(str(folder))


def test_folder_without_model_index(sd_folder: Path, tmp_path: Path) -> None:
    folder = _copy(sd_folder, tmp_path)
    (folder / "model_index.json").unlink()
    with pytest.raises(ModelError, match=r"model_index\.json"):
        check_model_folder(str(folder))


def test_nonexistent_folder_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such-model"
    model = ModelConfig(path=str(missing))
    for call in (
        lambda: check_model_folder(str(missing)),
        lambda: load_model(model, torch.float32, CPU),
        lambda: unet_config(model),
        lambda: vae_scale_factor(model),
    ):
        with pytest.raises(ModelError, match=re.escape(str(missing))):
            call()


def test_bad_model_configs_are_rejected() -> None:
    with pytest.raises(ModelError, match="exactly one"):
        unet_config(ModelConfig(builtin="tiny", arch="sd15", weights="random"))
    with pytest.raises(ModelError, match="exactly one"):
        load_model(ModelConfig(), torch.float32, CPU)
    with pytest.raises(ModelError, match="weights: random"):
        unet_config(ModelConfig(arch="sd15"))


def test_measurement_model_sections_load_as_job_settings() -> None:
    """The model section the benchmark tools share: the shipped tiny model, or a named
    architecture with seeded random weights; an unknown architecture is refused."""
    assert measurement_model("tiny") == {"builtin": "tiny"}
    section = measurement_model("sdxl", seed=3)
    assert section == {"arch": "sdxl", "weights": "random", "seed": 3}
    assert ModelConfig(**section).arch == "sdxl"
    with pytest.raises(ModelError, match="unknown model arch 'sd3'"):
        measurement_model("sd3")
