"""SD3's text side: two CLIP encoders and an optional T5, following diffusers'
``StableDiffusion3Pipeline.encode_prompt`` (no clip skip).

Each CLIP tokenizer pads and cuts a prompt to its context (77 tokens); its encoder's
penultimate hidden states are the tokens and its projected embedding the pooled vector. The
two CLIPs' tokens are concatenated along the channels (768 + 1280 for SD3), zero-padded to
the T5 width and followed by T5's ``max_length`` tokens (256, padded, no attention mask); a
folder without ``text_encoder_3`` gets zeros for the T5 part, as the pipeline does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from pcpp_mpi.models.bundle import PromptEmbeddings
from pcpp_mpi.models.sd3 import T5_TOKENS


def _clip_length(tokenizer: Any, encoder: torch.nn.Module) -> int:
    return min(tokenizer.model_max_length, encoder.config.max_position_embeddings)


@dataclass
class SD3PromptEncoder:
    """``clip`` two ``(tokenizer, CLIPTextModelWithProjection)`` pairs, ``t5`` a
    ``(T5 tokenizer, T5EncoderModel)`` pair or ``None``, on ``device``; ``joint_dim`` the
    transformer's ``joint_attention_dim`` (the T5 width: zeros of it when ``t5`` is None)."""

    clip: tuple[tuple[Any, torch.nn.Module], ...]
    t5: tuple[Any, torch.nn.Module] | None
    device: torch.device
    joint_dim: int
    t5_tokens: int = T5_TOKENS

    def truncation(self, prompt: str) -> str | None:
        """Whether a tokenizer cuts ``prompt`` to what its encoder reads."""
        pairs = [(tokenizer, _clip_length(tokenizer, encoder)) for tokenizer, encoder in self.clip]
        if self.t5 is not None:
            pairs.append((self.t5[0], self.t5_tokens))
        for tokenizer, max_length in pairs:
            length = len(tokenizer(prompt, truncation=False, verbose=False).input_ids)
            if length > max_length:
                return f"{length} tokens, a text encoder reads the first {max_length}"
        return None

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> PromptEmbeddings:
        """Embed B prompts: hidden ``(B, 77 + t5_tokens, joint_dim)``, pooled ``(B, sum of
        the CLIP projections)``, float32 on the CPU."""
        if isinstance(prompts, str):
            raise TypeError("encode() takes a sequence of prompts, not a single string")
        prompts = list(prompts)
        hiddens, pooled = [], []
        for tokenizer, encoder in self.clip:
            tokens = tokenizer(
                prompts,
                padding="max_length",
                max_length=_clip_length(tokenizer, encoder),
                truncation=True,
                return_tensors="pt",
            )
            out = encoder(tokens.input_ids.to(self.device), output_hidden_states=True)
            pooled.append(out[0].float())
            hiddens.append(out.hidden_states[-2].float())
        clip = torch.cat(hiddens, dim=-1)
        if clip.shape[-1] > self.joint_dim:
            raise ValueError(
                f"SD3 text side: CLIP widths {clip.shape[-1]} exceed the transformer's "
                f"joint_attention_dim {self.joint_dim}"
            )
        if self.t5 is None:
            t5 = clip.new_zeros(len(prompts), self.t5_tokens, self.joint_dim)
        else:
            tokenizer, encoder = self.t5
            tokens = tokenizer(
                prompts,
                padding="max_length",
                max_length=self.t5_tokens,
                truncation=True,
                add_special_tokens=True,
                return_tensors="pt",
            )
            t5 = encoder(tokens.input_ids.to(self.device))[0].float()
        clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        hidden = torch.cat([clip, t5], dim=-2)
        return PromptEmbeddings(hidden=hidden.cpu(), pooled=torch.cat(pooled, dim=-1).cpu())
