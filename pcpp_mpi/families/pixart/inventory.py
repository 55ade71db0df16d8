"""The PixArt transformer's layer inventory: its levels, example inputs and traced layers.

A PixArt transformer has one spatial exchange: the self-attention (``attn1``) of every block,
over the tokens of the patch grid, row-major (``latent_height / p`` rows of ``latent_width /
p`` tokens). With ``p = 2**l`` that grid is level ``l`` of the band geometry, so the model has
``l + 1`` levels and bands are whole patches (``p`` latent rows). The patchify convolution
(kernel = stride = ``p``) reads its band's own rows only; cross-attention, AdaLN-single, the
caption projection, the feed-forward layers and the final layer are per token or per sample.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from diffusers import PixArtTransformer2DModel
from torch import nn

from pcpp_mpi.families.transformer import trace_patch_grid
from pcpp_mpi.plan.inventory import LayerInventory

#: caption tokens of the example call (any count: the inventory does not depend on it)
EXAMPLE_CAPTION_TOKENS = 8


def example_call(
    config: Mapping[str, Any], height: int, width: int
) -> Callable[[nn.Module], object]:
    """A function calling a PixArt transformer of ``config`` once on meta inputs
    ``(1, C, height, width)`` (with PixArt-alpha's size conditioning when it uses it)."""
    meta = torch.device("meta")
    caption = config["caption_channels"] or config["cross_attention_dim"]
    kwargs: dict[str, Any] = {
        "timestep": torch.empty(1, device=meta),
        "encoder_hidden_states": torch.empty(1, EXAMPLE_CAPTION_TOKENS, caption, device=meta),
    }
    if config.get("use_additional_conditions"):
        kwargs["added_cond_kwargs"] = {
            "resolution": torch.empty(1, 2, device=meta),
            "aspect_ratio": torch.empty(1, 1, device=meta),
        }
    sample = torch.empty(1, config["in_channels"], height, width, device=meta)

    def run(transformer: nn.Module) -> object:
        return transformer(sample, **kwargs)

    return run


def trace_inventory(
    config: Mapping[str, Any], latent_height: int, latent_width: int
) -> LayerInventory:
    """Trace a PixArt transformer built from ``config`` on the meta device at a global
    latent size: self-attention on the patch grid only."""
    return trace_patch_grid(
        PixArtTransformer2DModel,
        config,
        example_call(config, latent_height, latent_width),
        latent_height,
        latent_width,
        label="PixArt",
        attention="self-attention",
    )
