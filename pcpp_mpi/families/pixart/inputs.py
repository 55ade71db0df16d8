"""The PixArt transformer's call signature: a step's inputs and the conditioning they carry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class PixArtConditioning:
    """What the prompts of one image become, on the device in the transformer's dtype:
    ``hidden`` ``(B, L, D)`` T5 embeddings for cross-attention; ``mask`` ``(B, L)`` their
    attention mask (1 = token, 0 = padding) or ``None`` (every token counts); ``added``
    PixArt-alpha's size conditioning at 1024 px (``resolution`` ``(B, 2)``, ``aspect_ratio``
    ``(B, 1)``, of the whole image) or ``None``."""

    hidden: torch.Tensor
    mask: torch.Tensor | None
    added: dict[str, torch.Tensor] | None


def _clone(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.clone()


@dataclass
class PixArtInputs:
    """One transformer call's inputs (local: this band's rows of the latent)."""

    sample: torch.Tensor  # (B, C, rows, W)
    timestep: torch.Tensor  # 0-d
    hidden: torch.Tensor  # (B, L, D)
    mask: torch.Tensor | None  # (B, L)
    added: dict[str, torch.Tensor] | None

    def copy_into(self, static: PixArtInputs) -> None:
        static.sample.copy_(self.sample)
        static.timestep.copy_(self.timestep)
        static.hidden.copy_(self.hidden)
        if self.mask is not None:
            assert static.mask is not None
            static.mask.copy_(self.mask)
        for key, value in (self.added or {}).items():
            assert static.added is not None
            static.added[key].copy_(value)

    def clone(self) -> PixArtInputs:
        return PixArtInputs(
            sample=self.sample.clone(),
            timestep=self.timestep.clone(),
            hidden=self.hidden.clone(),
            mask=_clone(self.mask),
            added=None if self.added is None else {k: v.clone() for k, v in self.added.items()},
        )

    def call(self, transformer: Any) -> torch.Tensor:
        """``transformer`` (a diffusers PixArt transformer, or it compiled) on these inputs:
        the noise prediction ``(B, C, rows, W)``, local. A transformer with learned sigma
        predicts ``2 * C`` channels (noise, then variance): the scheduler gets the noise, as
        in diffusers' PixArt pipelines."""
        batch, channels = self.sample.shape[:2]
        out = transformer(
            self.sample,
            encoder_hidden_states=self.hidden,
            timestep=self.timestep.expand(batch),
            added_cond_kwargs=self.added,
            encoder_attention_mask=self.mask,
        ).sample
        if out.shape[1] == 2 * channels:
            return out[:, :channels]
        if out.shape[1] != channels:
            raise ValueError(
                f"PixArt transformer predicts {out.shape[1]} channels for a {channels}-channel "
                f"latent (expected {channels}, or {2 * channels} with learned sigma)"
            )
        return out
