"""The UNet family's layer inventory (families/unet/inventory over the generic
parallel/inventory) traced on the meta device."""

from __future__ import annotations

import time

import pytest

from pcpp_mpi.config.schema import ModelConfig
from pcpp_mpi.families import denoiser_family
from pcpp_mpi.families.unet.inventory import trace_inventory, unet_levels
from pcpp_mpi.models import unet_config
from pcpp_mpi.plan.inventory import LayerInventory

TINY_CONFIG = unet_config(ModelConfig(builtin="tiny"))
CHANNELS = tuple(TINY_CONFIG["block_out_channels"])  # one entry per level


@pytest.fixture(scope="module")
def tiny() -> LayerInventory:
    return trace_inventory(TINY_CONFIG, 20, 16)


def test_tiny_architecture_assumed_below() -> None:
    # the counts below follow from these choices of the tiny UNet
    assert TINY_CONFIG["layers_per_block"] == 1
    assert tuple(TINY_CONFIG["down_block_types"]) == (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    )
    assert TINY_CONFIG["mid_block_type"] == "UNetMidBlock2DCrossAttn"
    assert tuple(TINY_CONFIG["up_block_types"]) == (
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    )
    assert TINY_CONFIG["norm_num_groups"] == 8
    assert TINY_CONFIG["transformer_layers_per_block"] in (1, (1, 1, 1), [1, 1, 1])


def test_tiny_shape(tiny: LayerInventory) -> None:
    # three entries in block_out_channels: three resolution levels; latent 20 x 16, 4 channels
    assert len(CHANNELS) == 3
    assert unet_levels(TINY_CONFIG) == 3
    assert tiny.levels == 3
    assert (tiny.latent_height, tiny.latent_width, tiny.latent_channels) == (20, 16, 4)
    assert [tiny.width_at(level) for level in range(3)] == [16, 8, 4]


def test_tiny_counts(tiny: LayerInventory) -> None:
    # Tiny UNet: layers_per_block 1, down (CrossAttn, CrossAttn, Down), mid CrossAttn,
    # up (Up, CrossAttn, CrossAttn); up blocks have layers_per_block + 1 = 2 resnets each.
    #
    # Convolutions with a kernel taller than one row (1x1 shortcuts and proj_in/out are
    # pointwise and not listed):
    #   conv_in                                             1
    #   down blocks: 1 resnet x (conv1, conv2) x 3 blocks   6
    #                downsamplers in blocks 0 and 1         2  (the last down block has none)
    #   mid block: 2 resnets x 2                            4
    #   up blocks: 2 resnets x 2 x 3 blocks                12
    #              upsamplers in blocks 0 and 1             2  (the last up block has none)
    #   conv_out                                            1
    assert len(tiny.convs) == 1 + 6 + 2 + 4 + 12 + 2 + 1 == 28
    # GroupNorms: 2 per resnet (3 down + 2 mid + 6 up = 11 resnets), 1 per Transformer2D
    # (2 down + 1 mid + 2 + 2 up = 7), conv_norm_out
    assert len(tiny.norms) == 2 * 11 + 7 + 1 == 30
    # Self-attentions: one transformer block (attn1) per Transformer2D; attn2 is cross-attention
    assert len(tiny.attns) == 7
    assert all(name.endswith("attn1") for name in (a.name for a in tiny.attns))
    # every conv is a zero-padded 3x3: one halo row on each side, or above only for stride 2
    assert {(c.kernel, c.padding, c.dilation) for c in tiny.convs} == {(3, 1, 1)}
    strided = [c.name for c in tiny.convs if c.stride == 2]
    assert strided == ["down_blocks.0.downsamplers.0.conv", "down_blocks.1.downsamplers.0.conv"]
    # all GroupNorms use norm_num_groups 8
    assert {n.groups for n in tiny.norms} == {8}


def test_tiny_levels_of_named_layers(tiny: LayerInventory) -> None:
    convs = {c.name: c for c in tiny.convs}
    norms = {n.name: n for n in tiny.norms}
    attns = {a.name: a for a in tiny.attns}
    assert convs["conv_in"].level == 0 and convs["conv_in"].in_channels == 4
    assert convs["conv_out"].level == 0 and convs["conv_out"].in_channels == CHANNELS[0]
    down = convs["down_blocks.0.downsamplers.0.conv"]
    # the stride-2 conv reads level 0 and writes level 1
    assert (down.level, down.stride, down.in_channels) == (0, 2, CHANNELS[0])
    assert convs["down_blocks.1.downsamplers.0.conv"].level == 1
    assert convs["down_blocks.1.resnets.0.conv1"].level == 1
    # an upsampler's conv runs after the interpolation: at the finer level
    assert convs["up_blocks.0.upsamplers.0.conv"].level == 1
    assert convs["up_blocks.1.upsamplers.0.conv"].level == 0
    # the mid block runs at the coarsest level, 20 / 4 = 5 rows
    assert {c.level for name, c in convs.items() if name.startswith("mid_block")} == {2}
    assert {n.level for name, n in norms.items() if name.startswith("mid_block")} == {2}
    assert attns["mid_block.attentions.0.transformer_blocks.0.attn1"].level == 2
    assert norms["conv_norm_out"].level == 0
    # concatenated skip connections: up_blocks.0 resnet 0 sees the mid block's output and the
    # last down block's, both at the deepest width
    assert convs["up_blocks.0.resnets.0.conv1"].in_channels == 2 * CHANNELS[2]
    assert norms["up_blocks.0.resnets.0.norm1"].channels == 2 * CHANNELS[2]
    assert convs["down_blocks.1.resnets.0.conv1"].in_channels == CHANNELS[0]


def test_tiny_attention_inner_dims(tiny: LayerInventory) -> None:
    # the inner dim is the channel count of the attention's level (block_out_channels[level]);
    # attention_head_dim 8 is (as in diffusers' SD configs) the number of heads
    by_level = {(a.level, a.inner_dim, a.heads) for a in tiny.attns}
    assert by_level == {(0, CHANNELS[0], 8), (1, CHANNELS[1], 8), (2, CHANNELS[2], 8)}
    levels = [a.level for a in tiny.attns]
    assert levels == [0, 1, 2, 1, 1, 0, 0]  # execution order: down, mid, up


def test_tiny_levels_follow_latent_size(tiny: LayerInventory) -> None:
    small = trace_inventory(TINY_CONFIG, 8, 4)
    assert [c.level for c in small.convs] == [c.level for c in tiny.convs]
    assert [a.level for a in small.attns] == [a.level for a in tiny.attns]
    assert small.width_at(2) == 1


def test_sdxl_traces_quickly_on_meta() -> None:
    config = unet_config(ModelConfig(arch="sdxl", weights="random"))
    start = time.perf_counter()
    inventory = trace_inventory(config, 128, 128)
    elapsed = time.perf_counter() - start
    assert elapsed < 30.0
    assert inventory.levels == 3
    # transformer_layers_per_block (1, 2, 10) on blocks (DownBlock, CrossAttn, CrossAttn):
    #   down: 2 x 2 + 2 x 10 = 24, mid: 10, up (3 attentions each): 3 x 10 + 3 x 2 = 36
    assert len(inventory.attns) == 24 + 10 + 36 == 70
    assert {a.level for a in inventory.attns} == {1, 2}
    assert {(a.level, a.inner_dim) for a in inventory.attns} == {(1, 640), (2, 1280)}
    assert inventory.width_at(2) == 32


def test_the_family_traces_the_same_inventory_and_marks_conv_in_fresh(
    tiny: LayerInventory,
) -> None:
    family = denoiser_family(ModelConfig(builtin="tiny"))
    assert family.name == "unet"
    assert family.trace_inventory(ModelConfig(builtin="tiny"), 20, 16) == tiny
    assert [c.name for c in tiny.convs if c.always_fresh] == ["conv_in"]
    shape = family.model_shape(ModelConfig(builtin="tiny"))
    assert (shape.levels, shape.latent_channels) == (tiny.levels, tiny.latent_channels)
