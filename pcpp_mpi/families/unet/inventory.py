"""The UNet's layer inventory: its levels, example inputs and the trace of its spatial layers.

The generic tracing (:func:`pcpp_mpi.parallel.inventory.trace_layers`) records the layers; this
module knows the UNet's call (sample, timestep, text embeddings, SDXL's added conditioning)
and that ``conv_in`` reads the step's own latent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from pcpp_mpi.parallel.inventory import LayerInventory, UnsupportedModelError, trace_layers

#: convolutions reading the step's input ``x_t`` (their halo is fresh in every step)
FRESH_CONVS = frozenset({"conv_in"})


def unet_levels(unet_config: Mapping[str, Any]) -> int:
    """Number of resolution levels (``len(block_out_channels)``)."""
    return len(unet_config["block_out_channels"])


def example_call(
    config: Mapping[str, Any], height: int, width: int
) -> Callable[[nn.Module], object]:
    """A function calling a UNet of ``config`` once on meta inputs ``(1, C, height, width)``."""
    meta = torch.device("meta")
    sample = torch.empty(1, config["in_channels"], height, width, device=meta)
    kwargs: dict[str, Any] = {
        "timestep": torch.tensor(1),
        "encoder_hidden_states": torch.empty(1, 77, config["cross_attention_dim"], device=meta),
    }
    if config.get("addition_embed_type") == "text_time":
        time_dim = config["addition_time_embed_dim"]
        pooled = config["projection_class_embeddings_input_dim"] - 6 * time_dim
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.empty(1, pooled, device=meta),
            "time_ids": torch.empty(1, 6, device=meta),
        }
    elif config.get("addition_embed_type") is not None:
        raise UnsupportedModelError(
            f"addition_embed_type {config['addition_embed_type']!r} is not supported"
        )

    def run(unet: nn.Module) -> object:
        return unet(sample, **kwargs)

    return run


def trace_inventory(
    unet_config: Mapping[str, Any], latent_height: int, latent_width: int
) -> LayerInventory:
    """Trace a UNet built from ``unet_config`` on the meta device at the given latent size."""
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(dict(unet_config))
    return inventory_of(unet, latent_height, latent_width)


def inventory_of(unet: nn.Module, latent_height: int, latent_width: int) -> LayerInventory:
    """Trace ``unet``'s structure (on a meta twin built from its config when it has weights:
    only shapes are recorded)."""
    config = unet.config
    if next(unet.parameters()).device.type != "meta":
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(dict(config))
    return trace_layers(
        unet,
        example_call(config, latent_height, latent_width),
        latent_height,
        latent_width,
        levels=unet_levels(config),
        latent_channels=config["in_channels"],
        fresh_convs=FRESH_CONVS,
    )
