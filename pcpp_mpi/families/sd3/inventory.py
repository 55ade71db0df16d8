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

from pcpp_mpi.parallel.inventory import LayerInventory, UnsupportedModelError, trace_layers

#: text tokens of the example call (any count: the inventory does not depend on it)
EXAMPLE_TEXT_TOKENS = 8


def sd3_levels(config: Mapping[str, Any]) -> int:
    """Levels of the band geometry: ``log2(patch_size) + 1`` (the patch grid is the last)."""
    patch = int(config["patch_size"])
    if patch < 1 or patch & (patch - 1):
        raise UnsupportedModelError(
            f"SD3 patch_size {patch} is not a power of two: bands cannot split its grid"
        )
    return patch.bit_length()


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


def _meta_twin(config: Mapping[str, Any]) -> nn.Module:
    with torch.device("meta"):
        return SD3Transformer2DModel.from_config(dict(config))


def trace_inventory(
    config: Mapping[str, Any], latent_height: int, latent_width: int
) -> LayerInventory:
    """Trace an SD3 transformer built from ``config`` on the meta device at a global latent
    size."""
    return _trace(_meta_twin(config), config, latent_height, latent_width)


def inventory_of(transformer: nn.Module, latent_height: int, latent_width: int) -> LayerInventory:
    """The same for a built transformer (traced on a meta twin built from its config: only
    shapes are recorded)."""
    config = dict(transformer.config)
    return _trace(_meta_twin(config), config, latent_height, latent_width)


def _trace(
    transformer: nn.Module, config: Mapping[str, Any], latent_height: int, latent_width: int
) -> LayerInventory:
    levels = sd3_levels(config)
    max_size = config.get("pos_embed_max_size")
    patch = int(config["patch_size"])
    for key, size in (("height", latent_height), ("width", latent_width)):
        if max_size is not None and size // patch > max_size:
            raise UnsupportedModelError(
                f"SD3 transformer: a latent {key} of {size} rows is {size // patch} patches, "
                f"more than its positional table's {max_size} (pos_embed_max_size)"
            )
    inventory = trace_layers(
        transformer,
        example_call(config, latent_height, latent_width),
        latent_height,
        latent_width,
        levels=levels,
        latent_channels=config["in_channels"],
    )
    if inventory.convs or inventory.norms:
        names = [spec.name for spec in (*inventory.convs, *inventory.norms)]
        raise UnsupportedModelError(
            f"SD3 transformer with spatial layers besides attention: {names}"
        )
    if any(attn.level != levels - 1 for attn in inventory.attns):
        raise UnsupportedModelError("SD3 attention off the patch grid")
    return inventory
