"""The PixArt family without MPI: positional embeddings of a band, the family lookup, PixArt
folders (loading, missing parts), the full-size PixArt-Sigma plan, and the band-parallel
transformer on in-memory exchanges (``parallel_fakes``)."""

from __future__ import annotations

import json
import shutil
import threading
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import PixArtTransformer2DModel
from diffusers.models.embeddings import PatchEmbed
from parallel_fakes import FakeComm, run_bands, torch_threads
from pixart_folder import make_pixart_folder

from pcpp_mpi.config import ConfigError, job_from_dict
from pcpp_mpi.config.schema import ModelConfig
from pcpp_mpi.families import denoiser_family
from pcpp_mpi.families.pixart import PixArtFamily, PixArtInputs
from pcpp_mpi.families.pixart.family import size_conditioning
from pcpp_mpi.families.unet import UNetFamily
from pcpp_mpi.geometry import Band, split_bands
from pcpp_mpi.models import ModelError, load_model, scheduler_config, transformer_config
from pcpp_mpi.models.pixart import (
    build_seeded_transformer,
    pixart_scheduler_config,
    tiny_pixart_config,
)
from pcpp_mpi.models.random_arch import arch_vae_config
from pcpp_mpi.parallel import apply
from pcpp_mpi.parallel.band_attention import BandSelfAttnProcessor
from pcpp_mpi.parallel.clock import StepClock
from pcpp_mpi.parallel.pos_embed import BandPatchEmbed, band_pos_embed, global_pos_embed
from pcpp_mpi.planning import make_plan

SIGMA = ModelConfig(arch="pixart-sigma", weights="random")
FAMILY = PixArtFamily()
LATENT = (22, 16)  # 11 patch rows of 8 patches


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pixart_folder(tmp_path_factory.mktemp("pixart") / "alpha")


def _patch_embed(**kwargs: Any) -> PatchEmbed:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return PatchEmbed(patch_size=2, in_channels=4, embed_dim=24, **kwargs)


# ------------------------------------------------------------------ positional embeddings
@pytest.mark.parametrize(
    "kwargs",
    [
        {"height": 32, "width": 32, "interpolation_scale": 2},  # another grid: computed
        {"height": 44, "width": 32, "interpolation_scale": 1},  # the stored grid (22 x 16)
        {"height": 32, "width": 32, "pos_embed_max_size": 16},  # cropped from the max size
    ],
    ids=["computed", "stored", "cropped"],
)
def test_a_band_gets_the_global_grids_embedding_rows(kwargs: dict[str, Any]) -> None:
    """A band's positional rows are the whole grid's rows it covers, and the wrapped patch
    embedding of a band's latent rows equals the band's tokens of the whole latent."""
    patch = _patch_embed(**kwargs).eval()
    cpu = torch.device("cpu")
    height, width = LATENT
    whole = global_pos_embed(patch, height, width, cpu)
    assert whole is not None and whole.shape == (1, 11 * 8, 24)
    latent = torch.randn(2, 4, height, width, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        tokens = patch(latent)  # diffusers' own result for the whole latent
    for band in split_bands(height, 3, 2):  # [8, 8, 6] rows
        first, last = band.start // 2 * 8, band.stop // 2 * 8
        rows = band_pos_embed(patch, band, height, width, cpu)
        assert rows is not None
        assert torch.equal(rows, whole[:, first:last])
        with torch.no_grad():
            banded = BandPatchEmbed(patch, band, height, width)(
                latent[:, :, band.start : band.stop]
            )
        assert torch.equal(banded, tokens[:, first:last])
    # the guard: a band given alone to diffusers' module gets another image's positions
    with torch.no_grad():
        alone = patch(latent[:, :, 0:8])
    assert not torch.allclose(alone, tokens[:, : 4 * 8])


def test_a_band_must_be_whole_patches() -> None:
    with pytest.raises(ValueError, match="whole patches"):
        band_pos_embed(
            _patch_embed(height=32, width=32), Band(0, 1, 8), *LATENT, torch.device("cpu")
        )


# ------------------------------------------------------------------ which family, which shape
def test_the_lookup_picks_pixart_by_arch_and_folder(folder: Path, tmp_path: Path) -> None:
    assert isinstance(denoiser_family(SIGMA), PixArtFamily)
    assert isinstance(denoiser_family(ModelConfig(builtin="tiny")), UNetFamily)
    assert isinstance(denoiser_family(ModelConfig(arch="sdxl", weights="random")), UNetFamily)
    assert isinstance(denoiser_family(ModelConfig(path=str(folder))), PixArtFamily)
    # model_index.json alone says so too (transformer/ missing: the check names it later)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "PixArtSigmaPipeline"}))
    assert isinstance(denoiser_family(ModelConfig(path=str(tmp_path))), PixArtFamily)


def test_pixart_sigma_is_the_published_configuration() -> None:
    config = transformer_config(SIGMA)
    assert (config["num_layers"], config["num_attention_heads"], config["attention_head_dim"]) == (
        28,
        16,
        72,
    )
    assert (config["patch_size"], config["in_channels"], config["out_channels"]) == (2, 4, 8)
    assert (config["caption_channels"], config["cross_attention_dim"]) == (4096, 1152)
    assert (config["sample_size"], config["interpolation_scale"]) == (128, 2)
    assert config["norm_type"] == "ada_norm_single"
    assert config["use_additional_conditions"] is False
    assert arch_vae_config("pixart-sigma") == arch_vae_config("sdxl")
    assert scheduler_config(SIGMA) == pixart_scheduler_config()
    shape = FAMILY.model_shape(SIGMA)
    assert (shape.levels, shape.latent_channels, shape.vae_scale_factor) == (2, 4, 8)


def test_the_pixart_sigma_plan_counts_attention_only() -> None:
    """``plan`` for a 1024 px PixArt-Sigma job on 3 ranks: 28 self-attentions on the 64 x 64
    patch grid, no halo or GroupNorm; K/V bytes by the formula."""
    job = job_from_dict(
        {
            "model": {"builtin": None, "arch": "pixart-sigma", "weights": "random"},
            "generation": {"height": 1024, "width": 1024, "steps": 4},
            "runtime": {"dtype": "float16"},
            "parallel": {"mode": "sync"},
        }
    )
    plan = make_plan(job, 3)
    assert plan.layout.unit == 2 and [b.rows for b in plan.layout.bands] == [44, 42, 42]
    assert (plan.inventory.convs, plan.inventory.norms) == ((), ())
    assert len(plan.inventory.attns) == 28 and {a.level for a in plan.inventory.attns} == {1}
    traffic = plan.step_traffic(0, "sync", 0)
    row_bytes = 2 * 64 * 2 * 1152 * 2  # CFG batch x tokens per row x K and V x fp16
    assert traffic.sent == {"kv": 28 * 2 * 22 * row_bytes}
    assert traffic.received == {"kv": 28 * (21 + 21) * row_bytes}


def test_sizes_off_the_patch_grid_are_refused() -> None:
    job = job_from_dict(
        {
            "model": {"builtin": None, "arch": "pixart-sigma", "weights": "random"},
            "generation": {"height": 1032, "width": 1024},
        }
    )
    with pytest.raises(ConfigError, match=r"1032 px is not a multiple of 16 px .*patch size 2"):
        make_plan(job, 2)


# ------------------------------------------------------------------ PixArt folders
def test_a_pixart_folder_loads(folder: Path) -> None:
    bundle = load_model(ModelConfig(path=str(folder)), torch.float32, torch.device("cpu"))
    assert isinstance(bundle.denoiser, PixArtTransformer2DModel)
    embeddings = bundle.encoder.encode(["a red cat", ""])
    assert embeddings.hidden.shape == (2, 120, 32)  # PixArt-alpha reads 120 tokens
    assert embeddings.mask is not None and embeddings.mask.sum(dim=1).tolist() == [4, 1]
    assert (
        bundle.encoder.truncation("a " * 150) == "151 tokens, the text encoder reads the first 120"
    )
    conditioning = FAMILY.conditioning(
        bundle, ["", "a cat"], 176, 128, torch.device("cpu"), torch.float32
    )
    assert conditioning.added is not None
    assert conditioning.added["resolution"].tolist() == [[176.0, 128.0]] * 2
    assert conditioning.added["aspect_ratio"].tolist() == [[176 / 128]] * 2
    # the noise half of the learned-sigma output, the band's shape
    inputs = FAMILY.step_inputs(torch.randn(2, 4, 6, 16), torch.tensor(500), conditioning)
    with torch.no_grad():
        full = bundle.denoiser(
            inputs.sample,
            encoder_hidden_states=inputs.hidden,
            timestep=torch.tensor([500, 500]),
            added_cond_kwargs=inputs.added,
            encoder_attention_mask=inputs.mask,
        ).sample
        out = FAMILY.call(bundle.denoiser, inputs)
    assert full.shape == (2, 8, 6, 16) and torch.equal(out, full[:, :4])


def test_a_pixart_sigma_folder_reads_300_tokens(tmp_path: Path) -> None:
    path = make_pixart_folder(tmp_path / "sigma", sigma=True, size_conditioning=False)
    bundle = load_model(ModelConfig(path=str(path)), torch.float32, torch.device("cpu"))
    assert bundle.encoder.encode(["a dog"]).hidden.shape == (1, 300, 32)
    assert size_conditioning(bundle.denoiser, 1, 1024, 1024) is None


@pytest.mark.parametrize(
    ("remove", "named"),
    [
        (("transformer",), "transformer/ (directory)"),
        (("text_encoder", "tokenizer"), "tokenizer/ (directory); text_encoder/ (directory)"),
    ],
)
def test_missing_pixart_parts_are_named(
    folder: Path, tmp_path: Path, remove: tuple[str, ...], named: str
) -> None:
    broken = Path(shutil.copytree(folder, tmp_path / "broken"))
    for part in remove:
        shutil.rmtree(broken / part)
    with pytest.raises(ModelError, match=re_escape(named)):
        load_model(ModelConfig(path=str(broken)), torch.float32, torch.device("cpu"))


@pytest.mark.skipif(find_spec("sentencepiece") is not None, reason="sentencepiece is installed")
def test_a_sentencepiece_only_tokenizer_says_what_to_install(folder: Path, tmp_path: Path) -> None:
    broken = Path(shutil.copytree(folder, tmp_path / "spiece"))
    (broken / "tokenizer" / "tokenizer.json").unlink()
    (broken / "tokenizer" / "spiece.model").write_bytes(b"\0")
    with pytest.raises(ModelError, match="pip install sentencepiece"):
        load_model(ModelConfig(path=str(broken)), torch.float32, torch.device("cpu"))


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


# ------------------------------------------------------------------ band-parallel, in memory
def _tiny_transformer() -> PixArtTransformer2DModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        return PixArtTransformer2DModel(**tiny_pixart_config()).requires_grad_(False).eval()


def _twin(model: PixArtTransformer2DModel) -> PixArtTransformer2DModel:
    twin = PixArtTransformer2DModel(**tiny_pixart_config())
    twin.load_state_dict(model.state_dict())
    return twin.requires_grad_(False).eval()


def test_sync_bands_equal_the_whole_and_remove_restores() -> None:
    """Three bands' ``sync`` step (the generic band attention on every ``attn1``, the banded
    patch embedding) equals the whole transformer; ``remove()`` puts diffusers' modules back."""
    model = _tiny_transformer()
    generator = torch.Generator().manual_seed(4)
    inputs = PixArtInputs(
        sample=torch.randn(2, 4, *LATENT, generator=generator),
        timestep=torch.tensor(300),
        hidden=torch.randn(2, 7, 32, generator=generator),
        mask=torch.tensor([[1.0] * 7, [1.0] * 3 + [0.0] * 4]),
        added=None,
    )
    with torch.no_grad():
        whole = FAMILY.call(model, inputs)
    inventory = FAMILY.inventory_of(model, *LATENT)
    bands = split_bands(LATENT[0], 3, 2)
    boxes: dict = {}
    lock = threading.Lock()
    networks, handles, clocks = [], [], []
    for index in range(3):
        network = _twin(model)
        clock = StepClock("sync", 1, 0)
        comm: Any = FakeComm(boxes, lock, index, 3)
        options = apply.BandOptions(mode="sync", ratio=0.3, batch=2)
        handles.append(FAMILY.parallelize(network, inventory, comm, bands, clock, options))
        networks.append(network)
        clocks.append(clock)
        clock.begin(0)
    assert isinstance(networks[0].pos_embed, BandPatchEmbed)
    assert isinstance(networks[0].transformer_blocks[1].attn1.processor, BandSelfAttnProcessor)
    assert not isinstance(networks[0].transformer_blocks[1].attn2.processor, BandSelfAttnProcessor)

    def band(i: int) -> torch.Tensor:
        rows = inputs.sample[:, :, bands[i].start : bands[i].stop]
        local = PixArtInputs(rows, inputs.timestep, inputs.hidden, inputs.mask, None)
        with torch.no_grad():
            return FAMILY.call(networks[i], local)

    with torch_threads(1):
        out = torch.cat(run_bands([lambda i=i: band(i) for i in range(3)]), dim=2)
    assert out.shape == whole.shape == (2, 4, *LATENT)
    assert (out - whole).abs().max() <= 1e-5 * whole.abs().max()
    for network, handle in zip(networks, handles, strict=True):
        handle.remove()
        assert isinstance(network.pos_embed, PatchEmbed)
        assert not any(
            isinstance(m.processor, BandSelfAttnProcessor)
            for m in network.modules()
            if hasattr(m, "processor")
        )


def test_seeded_transformers_repeat_and_leave_the_rng_alone() -> None:
    """``arch`` transformers are drawn from their seed on the device (the constructor's own
    initialisation, positional buffer included), whatever the caller's RNG state."""
    cpu = torch.device("cpu")
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_seeded_transformer(tiny_pixart_config(), 5, torch.float32, cpu)
    assert torch.equal(torch.rand(1), before)
    b = build_seeded_transformer(tiny_pixart_config(), 5, torch.bfloat16, cpu)
    c = build_seeded_transformer(tiny_pixart_config(), 6, torch.float32, cpu)
    for name, value in a.state_dict().items():
        assert torch.equal(value.bfloat16(), b.state_dict()[name]), name
    assert not torch.equal(a.scale_shift_table, c.scale_shift_table)
    assert torch.equal(a.pos_embed.pos_embed, c.pos_embed.pos_embed)
    assert not a.training and not any(p.requires_grad for p in a.parameters())
