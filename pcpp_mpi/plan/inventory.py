"""A model's spatial layers as plain data: what patch parallelism splits, and at which level.

A model family traces them (with torch: ``families/<family>/inventory`` through the generic
``parallel/inventory``); the plan and the run path both read this description, so the bytes
predicted and the bytes sent come from one source. Shapes are global (the whole image); level
``l`` has ``height / 2**l`` rows.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConvSpec:
    """A Conv2d whose kernel spans more than one row. Shapes are global (whole image).

    ``always_fresh``: the convolution reads the step's own input (the UNet's ``conv_in`` reads
    ``x_t``): its halo is always exchanged fresh (one latent row), also in displaced steps.
    """

    name: str
    level: int
    in_channels: int
    kernel: int
    stride: int
    padding: int
    dilation: int
    always_fresh: bool = False


@dataclass(frozen=True)
class NormSpec:
    """A GroupNorm over spatial activations at ``level``."""

    name: str
    level: int
    channels: int
    groups: int


@dataclass(frozen=True)
class AttnSpec:
    """A self-attention layer at ``level``; K and V have ``inner_dim`` channels each."""

    name: str
    level: int
    inner_dim: int
    heads: int


@dataclass(frozen=True)
class LayerInventory:
    """Every spatial layer of a model, in execution order, for a latent of ``height x width``."""

    levels: int
    latent_height: int
    latent_width: int
    latent_channels: int
    convs: tuple[ConvSpec, ...]
    norms: tuple[NormSpec, ...]
    attns: tuple[AttnSpec, ...]

    def width_at(self, level: int) -> int:
        return self.latent_width >> level
