"""The spatial layers of a UNet that patch parallelism must handle, and where they run.

The inventory is found by tracing one forward pass on the ``meta`` device (no weights, no
compute): every Conv2d, GroupNorm and self-attention layer records the *global* shape of its
input, from which its UNet level follows. The runtime plan and ``pcpp-mpi plan`` both read it,
so the bytes predicted and the bytes sent come from one description of the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention
from torch import nn

# the inventory as plain data lives in the planning layer; re-exported for the layers
from pcpp_mpi.plan.inventory import AttnSpec as AttnSpec
from pcpp_mpi.plan.inventory import ConvSpec as ConvSpec
from pcpp_mpi.plan.inventory import LayerInventory as LayerInventory
from pcpp_mpi.plan.inventory import NormSpec as NormSpec
from pcpp_mpi.plan.inventory import unet_levels as unet_levels


class UnsupportedModelError(ValueError):
    """The UNet has a layer that patch parallelism cannot split exactly."""


def _level_of(height: int, latent_height: int) -> int:
    level = (latent_height // height).bit_length() - 1
    if latent_height != height << level:
        raise UnsupportedModelError(f"activation height {height} is not latent/2**l")
    return level


def _attn_level(tokens: int, latent_height: int, latent_width: int) -> int:
    for level in range(16):
        if (latent_height >> level) * (latent_width >> level) == tokens:
            return level
    raise UnsupportedModelError(f"self-attention over {tokens} tokens matches no UNet level")


def _example_inputs(
    config: Mapping[str, Any], height: int, width: int
) -> tuple[torch.Tensor, dict[str, Any]]:
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
    return sample, kwargs


def is_self_attention(module: nn.Module) -> bool:
    return isinstance(module, Attention) and not module.is_cross_attention


def trace_inventory(
    unet_config: Mapping[str, Any], latent_height: int, latent_width: int
) -> LayerInventory:
    """Trace a UNet built from ``unet_config`` on the meta device at the given latent size."""
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(dict(unet_config))
    return inventory_of(unet, latent_height, latent_width)


def inventory_of(unet: nn.Module, latent_height: int, latent_width: int) -> LayerInventory:
    """Trace ``unet``'s structure (a meta copy is not needed: only shapes are recorded)."""
    config = unet.config
    input_shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str):
        def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            first = args[0] if args else kwargs["hidden_states"]
            input_shapes.setdefault(name, tuple(first.shape))

        return hook

    if next(unet.parameters()).device.type != "meta":
        with torch.device("meta"):
            meta_unet = UNet2DConditionModel.from_config(dict(config))
    else:
        meta_unet = unet
    handles = []
    for name, module in meta_unet.named_modules():
        if isinstance(module, nn.Conv2d | nn.GroupNorm) or is_self_attention(module):
            handles.append(module.register_forward_pre_hook(record(name), with_kwargs=True))
    try:
        sample, kwargs = _example_inputs(config, latent_height, latent_width)
        meta_unet(sample, **kwargs)
    finally:
        for handle in handles:
            handle.remove()

    convs: list[ConvSpec] = []
    norms: list[NormSpec] = []
    attns: list[AttnSpec] = []
    modules = dict(meta_unet.named_modules())
    for name, shape in input_shapes.items():
        module = modules[name]
        if isinstance(module, nn.Conv2d):
            kernel_h, _ = module.kernel_size
            if kernel_h == 1 and module.stride[0] == 1 and module.padding[0] == 0:
                continue
            if module.padding_mode != "zeros" or isinstance(module.padding, str):
                raise UnsupportedModelError(f"{name}: only zero-padded convolutions are supported")
            convs.append(
                ConvSpec(
                    name=name,
                    level=_level_of(shape[2], latent_height),
                    in_channels=module.in_channels,
                    kernel=kernel_h,
                    stride=module.stride[0],
                    padding=module.padding[0],
                    dilation=module.dilation[0],
                )
            )
        elif isinstance(module, nn.GroupNorm):
            if len(shape) != 4:
                raise UnsupportedModelError(f"{name}: GroupNorm over non-spatial input {shape}")
            norms.append(
                NormSpec(
                    name=name,
                    level=_level_of(shape[2], latent_height),
                    channels=module.num_channels,
                    groups=module.num_groups,
                )
            )
        else:
            if len(shape) != 3:
                raise UnsupportedModelError(f"{name}: self-attention over {len(shape)}-D input")
            attns.append(
                AttnSpec(
                    name=name,
                    level=_attn_level(shape[1], latent_height, latent_width),
                    inner_dim=module.to_k.out_features,
                    heads=module.heads,
                )
            )
    for spec in convs:
        if spec.stride > 1 and spec.padding == 0:
            raise UnsupportedModelError(
                f"{spec.name}: a strided convolution without padding (downsample_padding=0) "
                "pads asymmetrically inside the block and cannot be split into bands"
            )
    return LayerInventory(
        levels=unet_levels(config),
        latent_height=latent_height,
        latent_width=latent_width,
        latent_channels=config["in_channels"],
        convs=tuple(convs),
        norms=tuple(norms),
        attns=tuple(attns),
    )
