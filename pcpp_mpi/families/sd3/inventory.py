"""The SD3 transformer's layer inventory: its levels, example inputs and traced layers.

An SD3 transformer has one kind of spatial exchange: the attention over the image tokens of
the patch grid, row-major (``latent_height / p`` rows of ``latent_width / p`` tokens): each
block's joint attention (``attn``, whose text tokens are local) and SD3.5's second,
image-only attention (``attn2``). With ``p = 2**l`` that grid is level ``l`` of the band
geometry, so the model has ``l + 1`` levels and bands are whole patches (``p`` latent rows).
The patchify convolution (kernel = stride = ``p``) reads its band's own rows only; the
AdaLN modulations, the context embedder, the feed-forward layers and the final layer are per
token or per sample.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from diffusers import SD3Transformer2DModel
from torch import nn

from pcpp_mpi.families.transformer import patch_levels, trace_patch_grid
from pcpp_mpi.parallel.inventory import UnsupportedModelError
from pcpp_mpi.plan.inventory import LayerInventory

#: text tokens of the example call (any count: the inventory does not depend on it)
EXAMPLE_TEXT_TOKENS = 8


def example_call(
    config: Mapping[str, Any], height: int, width: int
) -> Callable[[nn.Module], object]:
    """A function calling an SD3 transformer of ``config`` once on meta inputs
    ``(1, C, height, width)``."""
    meta = torch.device("meta")
    kwargs = {
        "timestep": torch.empty(1, device=meta),
        "encoder_hidden_states": torch.empty(
            1, EXAMPLE_TEXT_TOKENS, config["joint_attention_dim"], device=meta
        ),
        "pooled_projections": torch.empty(1, config["pooled_projection_dim"], device=meta),
    }
    sample = torch.empty(1, config["in_channels"], height, width, device=meta)

    def run(transformer: nn.Module) -> object:
        return transformer(sample, **kwargs)

    return run


def trace_inventory(
    config: Mapping[str, Any], latent_height: int, latent_width: int
) -> LayerInventory:
    """Trace an SD3 transformer built from ``config`` on the meta device at a global latent
    size; a latent larger than its positional table (``pos_embed_max_size`` patches) is
    :class:`UnsupportedModelError`."""
    patch_levels(config, "SD3")  # a patch size that is no power of two is named first
    max_size = config.get("pos_embed_max_size")
    patch = int(config["patch_size"])
    for key, size in (("height", latent_height), ("width", latent_width)):
        if max_size is not None and size // patch > max_size:
            raise UnsupportedModelError(
                f"SD3 transformer: a latent {key} of {size} rows is {size // patch} patches, "
                f"more than its positional table's {max_size} (pos_embed_max_size)"
            )
    return trace_patch_grid(
        SD3Transformer2DModel,
        config,
        example_call(config, latent_height, latent_width),
        latent_height,
        latent_width,
        label="SD3",
    )
