"""The UNet's call signature: a step's inputs and the conditioning they carry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class UNetConditioning:
    """What the prompts of one image become, on the device in the UNet's dtype:
    ``hidden`` ``(B, L, D)`` text embeddings for cross-attention; ``added`` SDXL's
    micro-conditioning (``text_embeds`` ``(B, P)``, ``time_ids`` ``(B, 6)``) or ``None``."""

    hidden: torch.Tensor
    added: dict[str, torch.Tensor] | None


@dataclass
class UNetInputs:
    """One UNet call's inputs (local: this band's rows of the latent)."""

    sample: torch.Tensor  # (B, C, rows, W)
    timestep: torch.Tensor  # 0-d
    hidden: torch.Tensor  # (B, L, D)
    added: dict[str, torch.Tensor] | None

    def copy_into(self, static: UNetInputs) -> None:
        static.sample.copy_(self.sample)
        static.timestep.copy_(self.timestep)
        static.hidden.copy_(self.hidden)
        for key, value in (self.added or {}).items():
            assert static.added is not None
            static.added[key].copy_(value)

    def clone(self) -> UNetInputs:
        return UNetInputs(
            sample=self.sample.clone(),
            timestep=self.timestep.clone(),
            hidden=self.hidden.clone(),
            added=None if self.added is None else {k: v.clone() for k, v in self.added.items()},
        )

    def call(self, unet: Any) -> torch.Tensor:
        """``unet`` (a diffusers UNet, or it compiled) on these inputs: its ``sample``."""
        return unet(
            self.sample,
            self.timestep,
            encoder_hidden_states=self.hidden,
            added_cond_kwargs=self.added,
        ).sample
