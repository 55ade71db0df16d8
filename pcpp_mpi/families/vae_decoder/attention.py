"""The VAE mid-block self-attention over a band, with every band's keys and values."""

from __future__ import annotations

from typing import Protocol

import torch
from diffusers.models.attention_processor import Attention

from pcpp_mpi.parallel.band_attention import attend
from pcpp_mpi.parallel.clock import StepClock


class BlocksExchange(Protocol):
    def post(self, step: int, own: torch.Tensor) -> None: ...

    def wait(self, step: int) -> list[torch.Tensor | None]: ...


class BandDecoderAttnProcessor:
    """Attention processor for a decoder's self-attention on one band (what diffusers'
    ``AttnProcessor2_0`` computes on the whole latent, restricted to the band's queries).

    ``hidden_states`` ``(B, C, h, W)`` (or ``(B, h*W, C)`` tokens): the band's rows. The
    attention's own GroupNorm is a band-parallel one installed on ``attn.group_norm``; the
    keys and values of every band are exchanged fresh (``blocks``), so the band's output rows
    equal those of the whole-image attention. Without ``blocks`` (one band) nothing travels.
    """

    def __init__(self, clock: StepClock, blocks: BlocksExchange | None) -> None:
        self.clock = clock
        self.blocks = blocks

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("BandDecoderAttnProcessor handles unmasked self-attention only")
        if attn.spatial_norm is not None:
            raise ValueError("BandDecoderAttnProcessor: spatial norms are not supported")
        residual = hidden_states
        shape = hidden_states.shape
        if hidden_states.ndim == 4:
            batch, channels, height, width = shape
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        own = torch.cat([attn.to_k(hidden_states), attn.to_v(hidden_states)], dim=-1)
        context = own
        if self.blocks is not None:
            step = self.clock.step
            self.blocks.post(step, own)
            blocks = self.blocks.wait(step)
            context = torch.cat([own if b is None else b for b in blocks], dim=1)
        out = attend(attn, query, context)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if len(shape) == 4:
            out = out.transpose(-1, -2).reshape(shape)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor
