"""Model configuration dicts, completed with the diffusers defaults, without building anything."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any


def complete_config(cls: type, raw: Mapping[str, Any]) -> dict[str, Any]:
    """``raw`` (a diffusers config) with every missing ``cls.__init__`` argument set to its default.

    Keys starting with ``_`` (``_class_name``, ``_diffusers_version``) are dropped and JSON lists
    become tuples, so a config from code and one read from ``config.json`` compare alike.
    """
    config: dict[str, Any] = {}
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if param.default is not param.empty:
            config[name] = param.default
    for key, value in raw.items():
        if not key.startswith("_"):
            config[key] = tuple(value) if isinstance(value, list) else value
    return config


def sd_vae_layout() -> dict[str, Any]:
    """The raw VAE config the Stable Diffusion models share (SD 1.5, 2.1, SDXL, SD3): four
    levels of 128 to 512 channels, so 8 pixels per latent element, two layers each; each
    model adds its sample size, latent channels and scaling."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "block_out_channels": (128, 256, 512, 512),
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "act_fn": "silu",
        "force_upcast": True,
    }
