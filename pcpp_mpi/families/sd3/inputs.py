"""The SD3 transformer's call signature: a step's inputs and the conditioning they carry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class SD3Conditioning:
    """What the prompts of one image become, on the device in the transformer's dtype:
    ``hidden`` ``(B, T, joint_attention_dim)`` the text tokens (CLIP then T5: 333 x 4096 for
    SD3), ``pooled`` ``(B, pooled_projection_dim)`` the pooled CLIP embeddings (global: the
    same on every rank)."""

    hidden: torch.Tensor
    pooled: torch.Tensor


@dataclass
class SD3Inputs:
    """One transformer call's inputs (local: this band's rows of the latent)."""

    sample: torch.Tensor  # (B, C, rows, W)
    timestep: torch.Tensor  # 0-d (a float sigma * 1000 with flow matching)
    hidden: torch.Tensor  # (B, T, D)
    pooled: torch.Tensor  # (B, P)

    def copy_into(self, static: SD3Inputs) -> None:
        static.sample.copy_(self.sample)
        static.timestep.copy_(self.timestep)
        static.hidden.copy_(self.hidden)
        static.pooled.copy_(self.pooled)

    def clone(self) -> SD3Inputs:
        return SD3Inputs(
            sample=self.sample.clone(),
            timestep=self.timestep.clone(),
            hidden=self.hidden.clone(),
            pooled=self.pooled.clone(),
        )

    def call(self, transformer: Any) -> torch.Tensor:
        """``transformer`` (a diffusers SD3 transformer, or it compiled) on these inputs: its
        prediction ``(B, C, rows, W)`` (a velocity with flow matching), local."""
        batch = self.sample.shape[0]
        return transformer(
            self.sample,
            encoder_hidden_states=self.hidden,
            pooled_projections=self.pooled,
            timestep=self.timestep.expand(batch),
        ).sample
