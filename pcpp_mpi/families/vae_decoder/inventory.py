"""The spatial layers of a VAE decoder, traced on the ``meta`` device (no weights, no compute).

Every Conv2d, GroupNorm and self-attention of ``post_quant_conv`` and ``decoder`` records the
global shape of its input for a latent of the given size, from which its scale follows (1 at
the latent, doubling at every upsampling). ``pcpp-mpi plan`` and the run both read the result
(:class:`~pcpp_mpi.plan.decode.DecoderInventory`), so predicted and sent bytes agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from diffusers import AutoencoderKL
from diffusers.models.attention_processor import Attention
from torch import nn

from pcpp_mpi.plan.decode import DecoderAttn, DecoderConv, DecoderInventory, DecoderNorm


class UnsupportedDecoderError(ValueError):
    """The VAE decoder has a layer that cannot be split into bands exactly."""


def _scale_of(height: int, latent_height: int, name: str) -> int:
    scale = height // latent_height
    if scale < 1 or scale * latent_height != height or scale & (scale - 1):
        raise UnsupportedDecoderError(
            f"{name}: activation height {height} is not the latent height {latent_height} "
            "times a power of two"
        )
    return scale


def _token_scale(tokens: int, latent_height: int, latent_width: int, name: str) -> int:
    scale = math.isqrt(tokens // (latent_height * latent_width))
    if scale < 1 or scale * scale * latent_height * latent_width != tokens:
        raise UnsupportedDecoderError(f"{name}: {tokens} tokens match no scale of the latent")
    return _scale_of(latent_height * scale, latent_height, name)


def meta_vae(config: Mapping[str, Any]) -> AutoencoderKL:
    """A VAE built from ``config`` on the meta device (shapes only)."""
    with torch.device("meta"):
        return AutoencoderKL.from_config(dict(config))


def decode_latent(vae: AutoencoderKL, latent: torch.Tensor) -> torch.Tensor:
    """``post_quant_conv`` then the decoder: ``(B, C, h, w)`` latent (already unscaled and
    shifted by :func:`~pcpp_mpi.models.latent_scale.to_vae_latent`) to ``(B, 3, h*f, w*f)``
    pixels in about [-1, 1]. Bypasses ``decode``'s tiling and slicing, so a band decodes
    exactly like the whole latent."""
    if vae.post_quant_conv is not None:
        latent = vae.post_quant_conv(latent)
    return vae.decoder(latent)


def trace_decoder(
    vae_config: Mapping[str, Any], latent_height: int, latent_width: int
) -> DecoderInventory:
    """Trace the decoder of a VAE built from ``vae_config`` at the given latent size."""
    vae = meta_vae(vae_config)
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str):
        def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            first = args[0] if args else kwargs["hidden_states"]
            shapes.setdefault(name, tuple(first.shape))

        return hook

    modules = {
        name: module
        for name, module in vae.named_modules()
        if name == "post_quant_conv" or name.startswith("decoder.")
    }
    handles = [
        module.register_forward_pre_hook(record(name), with_kwargs=True)
        for name, module in modules.items()
        if isinstance(module, nn.Conv2d | nn.GroupNorm | Attention)
    ]
    try:
        latent = torch.empty(
            1, vae.config.latent_channels, latent_height, latent_width, device="meta"
        )
        with torch.no_grad():
            decode_latent(vae, latent)
    finally:
        for handle in handles:
            handle.remove()
    return _inventory(vae, modules, shapes, latent_height, latent_width)


def _inventory(
    vae: AutoencoderKL,
    modules: Mapping[str, nn.Module],
    shapes: Mapping[str, tuple[int, ...]],
    latent_height: int,
    latent_width: int,
) -> DecoderInventory:
    convs: list[DecoderConv] = []
    norms: list[DecoderNorm] = []
    attns: list[DecoderAttn] = []
    for name, shape in shapes.items():
        module = modules[name]
        if isinstance(module, nn.Conv2d):
            if module.padding_mode != "zeros" or isinstance(module.padding, str):
                raise UnsupportedDecoderError(f"{name}: only zero-padded convolutions are split")
            if module.stride[0] != 1:
                raise UnsupportedDecoderError(f"{name}: strided convolution in a decoder")
            if module.kernel_size[0] == 1 and module.padding[0] == 0:
                continue
            convs.append(
                DecoderConv(
                    name=name,
                    scale=_scale_of(shape[2], latent_height, name),
                    in_channels=module.in_channels,
                    kernel=module.kernel_size[0],
                    stride=1,
                    padding=module.padding[0],
                    dilation=module.dilation[0],
                )
            )
        elif isinstance(module, nn.GroupNorm):
            if len(shape) == 4:
                scale = _scale_of(shape[2], latent_height, name)
            elif len(shape) == 3:  # an attention's own norm, over (B, C, tokens)
                scale = _token_scale(shape[2], latent_height, latent_width, name)
            else:
                raise UnsupportedDecoderError(f"{name}: GroupNorm over {len(shape)}-D input")
            norms.append(DecoderNorm(name, scale, module.num_channels, module.num_groups))
        else:
            assert isinstance(module, Attention)
            if module.is_cross_attention or module.spatial_norm is not None:
                raise UnsupportedDecoderError(f"{name}: only plain self-attention is split")
            if len(shape) == 4:
                scale = _scale_of(shape[2], latent_height, name)
            else:
                scale = _token_scale(shape[1], latent_height, latent_width, name)
            attns.append(DecoderAttn(name, scale, module.to_k.out_features, module.heads))
    for name, module in modules.items():
        if type(module).__name__ == "SpatialNorm":
            raise UnsupportedDecoderError(f"{name}: SpatialNorm (MoVQ-style) is not split")
    config = vae.config
    return DecoderInventory(
        latent_height=latent_height,
        latent_width=latent_width,
        latent_channels=config.latent_channels,
        out_channels=config.out_channels,
        scale_factor=2 ** (len(config.block_out_channels) - 1),
        force_upcast=bool(config.get("force_upcast", False)),
        convs=tuple(convs),
        norms=tuple(norms),
        attns=tuple(attns),
    )
