"""A T5 text side (PixArt's): prompts padded to a fixed token count, with their attention mask.

Follows diffusers' PixArt pipelines (no caption cleaning): each prompt is tokenized to
``max_length`` tokens (120 for PixArt-alpha, 300 for PixArt-Sigma), padded and cut, and the
encoder reads it with the attention mask; the network's cross-attention gets the same mask
(``encoder_attention_mask``), so padding never counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pcpp_mpi.models.bundle import PromptEmbeddings


@dataclass
class T5PromptEncoder:
    """``tokenizer`` (a transformers T5 tokenizer) + ``encoder`` (``T5EncoderModel``) on
    ``device``; every prompt becomes ``max_length`` tokens."""

    tokenizer: Any
    encoder: torch.nn.Module
    device: torch.device
    max_length: int

    def truncation(self, prompt: str) -> str | None:
        """Whether ``prompt`` is longer than the ``max_length`` tokens the encoder reads."""
        length = len(self.tokenizer(prompt, truncation=False, verbose=False).input_ids)
        if length > self.max_length:
            return f"{length} tokens, the text encoder reads the first {self.max_length}"
        return None

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> PromptEmbeddings:
        """Embed B prompts: hidden ``(B, max_length, d_model)`` float32 on the CPU, mask
        ``(B, max_length)`` int64 (1 = token, 0 = padding), pooled ``None``."""
        if isinstance(prompts, str):
            raise TypeError("encode() takes a sequence of prompts, not a single string")
        tokens = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        mask = tokens.attention_mask.to(self.device)
        hidden = self.encoder(tokens.input_ids.to(self.device), attention_mask=mask)[0]
        return PromptEmbeddings(
            hidden=hidden.float().cpu(), pooled=None, mask=tokens.attention_mask.long()
        )
