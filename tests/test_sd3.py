"""SD3 on one process: the joint band attention against diffusers' own processor, the tiny SD3
transformer band-parallel through its family (bands in threads, fake exchanges), its
inventory and plan, the ``sd3-medium`` architecture's shapes and the family lookup."""

from __future__ import annotations

import copy
import shutil
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import SD3Transformer2DModel
from diffusers.models.attention_processor import Attention, JointAttnProcessor2_0
from parallel_fakes import FakeBlocks, FakeComm, Mailbox, run_bands, split_rows, torch_threads
from sd3_folder import CLIP_DIMS, T5_DIM, make_sd3_folder

from pcpp_mpi.config.schema import ModelConfig
from pcpp_mpi.engine.schedulers import is_flow_matching
from pcpp_mpi.families import denoiser_family, family_named
from pcpp_mpi.families.sd3 import SD3Family, SD3Inputs
from pcpp_mpi.geometry import Band, level_unit, split_bands
from pcpp_mpi.models import (
    ModelError,
    check_model_folder,
    denoiser_network,
    load_model,
    scheduler_config,
    vae_config,
)
from pcpp_mpi.models.sd3 import sd3_medium_config, tiny_sd3_config
from pcpp_mpi.parallel import apply
from pcpp_mpi.parallel.band_attention import BandSelfAttnProcessor
from pcpp_mpi.parallel.clock import StepClock
from pcpp_mpi.parallel.joint_attention import JointBandAttnProcessor
from pcpp_mpi.parallel.pos_embed import BandPatchEmbed

Tensor = torch.Tensor
WIDTH = 4  # tokens per row of the joint-attention unit tests
DIM = 24
TEXT = 5


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


# -- the joint processor -------------------------------------------------------------------------


def joint_attention(seed: int, *, pre_only: bool, qk_norm: str | None) -> Attention:
    torch.manual_seed(seed)
    attn = Attention(
        query_dim=DIM,
        added_kv_proj_dim=DIM,
        dim_head=8,
        heads=3,
        out_dim=DIM,
        context_pre_only=pre_only,
        bias=True,
        qk_norm=qk_norm,
        eps=1e-6,
        processor=JointAttnProcessor2_0(),
    )
    if qk_norm is not None:
        with torch.no_grad():  # RMS norm weights away from 1, so a swapped norm would show
            for norm in (attn.norm_q, attn.norm_k, attn.norm_added_q, attn.norm_added_k):
                norm.weight.uniform_(0.5, 1.5)
    return attn.requires_grad_(False).eval()


def band_joint_layers(
    reference: Attention, clocks: Sequence[StepClock], rows: Sequence[int]
) -> list[Attention]:
    box = Mailbox()
    layers = []
    for i in range(len(rows)):
        attn = copy.deepcopy(reference)
        attn.set_processor(
            JointBandAttnProcessor(
                clock=clocks[i],
                band_index=i,
                pattern="full",
                blocks=FakeBlocks(box, i, len(rows)),
                rows=None,
                kv_rows=None,
            )
        )
        layers.append(attn)
    return layers


@pytest.mark.parametrize("pre_only", [False, True], ids=["joint", "context_pre_only"])
@pytest.mark.parametrize("qk_norm", [None, "rms_norm"])
@pytest.mark.parametrize("rows", [(3, 2), (2, 3, 1)])
def test_joint_band_attention_sync_equals_diffusers(
    rows: tuple[int, ...], qk_norm: str | None, pre_only: bool
) -> None:
    """``sync`` on unequal bands: the image outputs put together are diffusers' joint
    attention over the whole image, and every band's text output is diffusers' text output."""
    reference = joint_attention(len(rows), pre_only=pre_only, qk_norm=qk_norm)
    x = torch.randn(2, sum(rows) * WIDTH, DIM)
    text = torch.randn(2, TEXT, DIM)
    image_ref, text_ref = reference(x, encoder_hidden_states=text)
    clocks = [StepClock("sync", 1, 0) for _ in rows]
    for clock in clocks:
        clock.begin(0)
    layers = band_joint_layers(reference, clocks, rows)
    parts = split_rows(x, [r * WIDTH for r in rows], dim=1)
    outs = run_bands(
        [lambda i=i: layers[i](parts[i], encoder_hidden_states=text) for i in range(len(rows))]
    )
    image = torch.cat([image_out for image_out, _ in outs], dim=1)
    assert torch.allclose(image, image_ref, atol=1e-6)
    for _, text_out in outs:
        if pre_only:
            assert text_out is None  # discarded by the block: not computed
        else:
            assert torch.allclose(text_out, text_ref, atol=1e-6)


def test_joint_band_attention_displaced_on_an_unchanged_input_equals_diffusers() -> None:
    """distrifusion on an unchanged input: the previous step's context is this step's, so every
    displaced step equals diffusers' joint attention (image and text)."""
    reference = joint_attention(3, pre_only=False, qk_norm="rms_norm")
    rows = (2, 3, 2)
    x = torch.randn(2, sum(rows) * WIDTH, DIM)
    text = torch.randn(2, TEXT, DIM)
    image_ref, text_ref = reference(x, encoder_hidden_states=text)
    clocks = [StepClock("distrifusion", 3, 1) for _ in rows]
    layers = band_joint_layers(reference, clocks, rows)
    parts = split_rows(x, [r * WIDTH for r in rows], dim=1)
    for step in range(3):
        for clock in clocks:
            clock.begin(step)
        outs = run_bands(
            [lambda i=i: layers[i](parts[i], encoder_hidden_states=text) for i in range(3)]
        )
        assert torch.allclose(torch.cat([o for o, _ in outs], dim=1), image_ref, atol=1e-6)
        for _, text_out in outs:
            assert torch.allclose(text_out, text_ref, atol=1e-6), step


def test_joint_band_attention_local_sees_its_band_and_the_text() -> None:
    """A ``local`` step (naive): the band's image tokens and the text, as diffusers' joint
    attention over that band alone."""
    reference = joint_attention(4, pre_only=False, qk_norm=None)
    clock = StepClock("naive", 1, 0)
    clock.begin(0)
    (layer,) = band_joint_layers(reference, [clock], (3,))
    x, text = torch.randn(1, 3 * WIDTH, DIM), torch.randn(1, TEXT, DIM)
    for got, want in zip(
        layer(x, encoder_hidden_states=text), reference(x, encoder_hidden_states=text), strict=True
    ):
        assert torch.allclose(got, want, atol=1e-6)


# -- the tiny SD3 transformer through its family ---------------------------------------------------

FAMILY = SD3Family()
LATENT = (14, 8)  # 7 patch rows: unequal bands on 2 and 3 ranks


@pytest.fixture(scope="module")
def tiny_sd3() -> SD3Transformer2DModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = SD3Transformer2DModel(**tiny_sd3_config())
    return model.requires_grad_(False).eval()


def sd3_inputs(seed: int, batch: int = 2) -> SD3Inputs:
    config = tiny_sd3_config()
    generator = torch.Generator().manual_seed(seed)
    return SD3Inputs(
        sample=torch.randn(batch, config["in_channels"], *LATENT, generator=generator),
        timestep=torch.tensor(700.0),
        hidden=torch.randn(batch, 9, config["joint_attention_dim"], generator=generator),
        pooled=torch.randn(batch, config["pooled_projection_dim"], generator=generator),
    )


def parallel_sd3(
    model: SD3Transformer2DModel, n: int, mode: str, steps: int, warmup: int, ratio: float = 0.5
) -> tuple[list[SD3Transformer2DModel], list[StepClock], tuple[Band, ...]]:
    inventory = FAMILY.inventory_of(model, *LATENT)
    bands = split_bands(LATENT[0], n, level_unit(inventory.levels))
    boxes: dict[str, Mailbox] = {}
    lock = threading.Lock()
    networks, clocks = [], []
    for index in range(n):
        band_model = copy.deepcopy(model)
        clock = StepClock(mode, steps, warmup)
        comm: Any = FakeComm(boxes, lock, index, n)
        options = apply.BandOptions(mode=mode, ratio=ratio, batch=2)
        FAMILY.parallelize(band_model, inventory, comm, bands, clock, options)
        networks.append(band_model)
        clocks.append(clock)
    return networks, clocks, bands


def run_sd3_bands(
    networks: Sequence[SD3Transformer2DModel],
    clocks: Sequence[StepClock],
    bands: Sequence[Band],
    step: int,
    inputs: SD3Inputs,
) -> Tensor:
    for clock in clocks:
        clock.begin(step)

    def band(i: int) -> Tensor:
        rows = inputs.sample[:, :, bands[i].start : bands[i].stop]
        return FAMILY.call(
            networks[i], SD3Inputs(rows, inputs.timestep, inputs.hidden, inputs.pooled)
        )

    return torch.cat(run_bands([lambda i=i: band(i) for i in range(len(networks))]), dim=2)


def test_the_tiny_inventory_is_every_attention_on_the_patch_grid(
    tiny_sd3: SD3Transformer2DModel,
) -> None:
    inventory = FAMILY.inventory_of(tiny_sd3, *LATENT)
    assert inventory.levels == 2 and not inventory.convs and not inventory.norms
    assert [(a.name, a.level, a.inner_dim) for a in inventory.attns] == [
        ("transformer_blocks.0.attn", 1, 24),
        ("transformer_blocks.0.attn2", 1, 24),
        ("transformer_blocks.1.attn", 1, 24),
    ]


@pytest.mark.parametrize("n", [2, 3])
def test_sync_bands_of_the_tiny_transformer_equal_one(
    tiny_sd3: SD3Transformer2DModel, n: int
) -> None:
    """``sync`` on unequal bands equals the plain diffusers transformer; the joint layers got
    the joint processor, SD3.5's image-only ``attn2`` the plain band attention, the patch
    embedding the band's global positions; ``remove()`` restores the model."""
    inputs = sd3_inputs(seed=n)
    full = FAMILY.call(tiny_sd3, inputs)
    networks, clocks, bands = parallel_sd3(tiny_sd3, n, "sync", 2, 0)
    block = networks[0].transformer_blocks[0]
    assert type(block.attn.processor) is JointBandAttnProcessor
    assert type(block.attn2.processor) is BandSelfAttnProcessor
    assert isinstance(networks[0].pos_embed, BandPatchEmbed)
    scale = full.abs().max()
    for step in range(2):
        out = run_sd3_bands(networks, clocks, bands, step, inputs)
        assert (out - full).abs().max() <= 1e-5 * scale, step


def test_naive_and_displaced_bands_differ_and_all_warm_equals_one(
    tiny_sd3: SD3Transformer2DModel,
) -> None:
    """The comparisons mean something: ``naive`` bands differ from one GPU; ``pcpp`` with
    ratio 1 on two bands on an unchanged input equals it at every step (stale = fresh)."""
    inputs = sd3_inputs(seed=7)
    full = FAMILY.call(tiny_sd3, inputs)
    scale = full.abs().max()
    naive, clocks, bands = parallel_sd3(tiny_sd3, 2, "naive", 1, 0)
    assert (run_sd3_bands(naive, clocks, bands, 0, inputs) - full).abs().max() > 1e-3 * scale
    networks, clocks, bands = parallel_sd3(tiny_sd3, 2, "pcpp", 3, 1, ratio=1.0)
    for step in range(3):
        out = run_sd3_bands(networks, clocks, bands, step, inputs)
        assert (out - full).abs().max() <= 1e-5 * scale, step


# -- shapes, lookup ------------------------------------------------------------------------------


def test_the_sd3_medium_arch_is_an_sd3_model_with_a_flow_schedule() -> None:
    model = ModelConfig(arch="sd3-medium", weights="random")
    assert denoiser_network(model) == "sd3"
    family = denoiser_family(model)
    assert isinstance(family, SD3Family) and family_named("sd3") == family
    shape = family.model_shape(model)
    assert (shape.levels, shape.latent_channels, shape.vae_scale_factor) == (2, 16, 8)
    config = sd3_medium_config()
    assert (config["num_layers"], config["num_attention_heads"], config["pos_embed_max_size"]) == (
        24,
        24,
        192,
    )
    vae = vae_config(model)
    assert (vae["latent_channels"], vae["scaling_factor"], vae["shift_factor"]) == (
        16,
        1.5305,
        0.0609,
    )
    assert not vae["use_quant_conv"] and not vae["use_post_quant_conv"]
    schedule = scheduler_config(model)
    assert schedule["_class_name"] == "FlowMatchEulerDiscreteScheduler" and schedule["shift"] == 3.0
    inventory = family.trace_inventory(model, 128, 128)  # 1024 px: 64 x 64 patches
    assert len(inventory.attns) == 24
    assert {(a.level, a.inner_dim, a.heads) for a in inventory.attns} == {(1, 1536, 24)}


# -- model folders -------------------------------------------------------------------------------


@pytest.mark.parametrize("t5", [True, False], ids=["clip_t5", "clip_only"])
def test_an_sd3_folder_loads_with_its_text_side(tmp_path: Path, t5: bool) -> None:
    """An SD3 pipeline folder is the SD3 family's: its transformer, SD3's VAE and schedule,
    and the text side of the pipeline (two CLIPs padded to T5's width, then T5's 256 tokens,
    zeros without ``text_encoder_3``)."""
    folder = make_sd3_folder(tmp_path / "sd3", t5=t5)
    model = ModelConfig(path=str(folder))
    assert denoiser_network(model) == "sd3"
    check_model_folder(str(folder))
    bundle = load_model(model, torch.float32, torch.device("cpu"))
    assert isinstance(bundle.denoiser, SD3Transformer2DModel)
    assert bundle.vae.config.latent_channels == 16 and bundle.vae.config.shift_factor == 0.0609
    assert is_flow_matching(bundle.scheduler_config)
    embeddings = bundle.encoder.encode(["a red cat", ""])
    assert embeddings.hidden.shape == (2, 77 + 256, T5_DIM)
    assert embeddings.pooled is not None and embeddings.pooled.shape == (2, sum(CLIP_DIMS))
    clip_width = sum(CLIP_DIMS)
    assert embeddings.hidden[:, :77, clip_width:].abs().max() == 0  # zero padding to T5's width
    assert (embeddings.hidden[:, 77:].abs().max() > 0) == t5


@pytest.mark.parametrize("component", ["transformer", "text_encoder_2", "tokenizer"])
def test_an_sd3_folder_without_a_component_names_it(tmp_path: Path, component: str) -> None:
    folder = make_sd3_folder(tmp_path / "sd3")
    shutil.rmtree(folder / component)
    with pytest.raises(ModelError, match=f"missing {component}/"):
        check_model_folder(str(folder))
