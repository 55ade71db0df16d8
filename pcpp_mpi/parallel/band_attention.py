"""Self-attention over a band whose keys and values include other bands' rows.

Installed with diffusers' own extension point (``Attention.set_processor``); the attention
module, its weights and cross-attention layers stay untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from pcpp_mpi.parallel.block_copies import BlockCopies, CopyList
from pcpp_mpi.parallel.clock import StepClock


def _plain_linear(module: torch.nn.Module) -> bool:
    """An ``nn.Linear`` whose forward nothing wraps (no hooks, no accelerate hook)."""
    return (
        type(module) is torch.nn.Linear
        and not module._forward_hooks
        and not module._forward_pre_hooks
        and "_hf_hook" not in module.__dict__
        and "forward" not in module.__dict__
    )


class BlocksExchange(Protocol):
    def post(self, step: int, own: torch.Tensor) -> None: ...

    def wait(self, step: int) -> list[torch.Tensor | None]: ...

    def fillable_send(self, step: int) -> torch.Tensor | None: ...

    def post_filled(self, step: int) -> None: ...


class RowExchange(Protocol):
    def post(self, step: int, to_up: torch.Tensor | None, to_down: torch.Tensor | None) -> None: ...

    def wait(self, step: int) -> tuple[torch.Tensor | None, torch.Tensor | None]: ...

    def fillable_sends(
        self, step: int
    ) -> tuple[torch.Tensor | None, torch.Tensor | None] | None: ...

    def post_filled(self, step: int) -> None: ...


@dataclass(frozen=True)
class KVRows:
    """Rows of K/V (at this layer's level) a ``pcpp`` rank shares: ``own`` rows of its band go
    to each neighbour; it receives ``from_up`` rows (the bottom of the band above) and
    ``from_down`` rows (the top of the band below)."""

    width: int
    own_rows: int
    own: int
    from_up: int
    from_down: int


class BandSelfAttnProcessor:
    """Attention processor for one self-attention layer of one band.

    ``hidden_states`` is ``(B, h*W, C)``: the band's tokens, row-major. Keys and values are the
    band's own (fresh) plus, by step kind and mode:

    - ``local``: nothing else;
    - ``sync``: every other band's fresh K/V;
    - displaced ``full``: every other band's K/V from the previous step;
    - displaced ``pcpp``: the previous step's K/V rows of the two neighbours next to the shared
      boundaries (``KVRows``).

    ``copies`` (e.g. :func:`pcpp_mpi.parallel.copy_kernels.copy_blocks`): in a displaced step
    the context and what this band sends for the next step are written by one call of it
    (instead of a concatenation and a copy per send buffer), when the send buffers are on the
    compute device.
    """

    def __init__(
        self,
        *,
        clock: StepClock,
        band_index: int,
        pattern: Literal["full", "pcpp"],
        blocks: BlocksExchange | None,
        rows: RowExchange | None,
        kv_rows: KVRows | None,
        copies: BlockCopies | None = None,
    ) -> None:
        self.clock = clock
        self.band_index = band_index
        self.pattern = pattern
        self.blocks = blocks
        self.rows = rows
        self.kv_rows = kv_rows
        self.copies = copies
        self._kv_key: tuple | None = None
        self._kv_weights: tuple[torch.Tensor, torch.Tensor | None] | None = None

    # -------------------------------------------------------------- projections
    def _keys_values(self, attn: Attention, hidden_states: torch.Tensor) -> torch.Tensor:
        """``(B, N, 2*inner)``: keys, then values, of the band's tokens. Plain linear layers
        run as one GEMM over their stacked weights (stacked once, again if they change): it
        saves a launch and a concatenation per layer and step."""
        to_k, to_v = attn.to_k, attn.to_v
        if not (_plain_linear(to_k) and _plain_linear(to_v)) or (
            (to_k.bias is None) != (to_v.bias is None)
        ):  # adapters, hooks (offloading...): run the modules themselves
            return torch.cat([to_k(hidden_states), to_v(hidden_states)], dim=-1)
        key = tuple(
            (p.device, p.dtype, p.data_ptr(), p._version)
            for p in (to_k.weight, to_v.weight, to_k.bias, to_v.bias)
            if p is not None
        )
        if self._kv_key != key:
            with torch.no_grad():
                weight = torch.cat([to_k.weight, to_v.weight], dim=0)
                bias = None if to_k.bias is None else torch.cat([to_k.bias, to_v.bias], dim=0)
            self._kv_weights = (weight, bias)
            self._kv_key = key
        assert self._kv_weights is not None
        return F.linear(hidden_states, *self._kv_weights)

    # -------------------------------------------------------------- context assembly
    def _with_blocks(self, own: torch.Tensor, blocks: list[torch.Tensor | None]) -> torch.Tensor:
        parts = [own if b is None else b for b in blocks]
        return torch.cat(parts, dim=1)

    def _neighbour_rows_from_blocks(
        self, blocks: list[torch.Tensor | None]
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        assert self.kv_rows is not None
        width = self.kv_rows.width
        i = self.band_index
        above = below = None
        if i > 0 and self.kv_rows.from_up:
            block = blocks[i - 1]
            assert block is not None
            above = block[:, block.shape[1] - self.kv_rows.from_up * width :]
        if i + 1 < len(blocks) and self.kv_rows.from_down:
            block = blocks[i + 1]
            assert block is not None
            below = block[:, : self.kv_rows.from_down * width]
        return above, below

    def _rows_to_send(self, own: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This band's first and last ``kv_rows.own`` rows of K/V (to the bands above and
        below)."""
        assert self.kv_rows is not None
        tokens = self.kv_rows.own * self.kv_rows.width
        return own[:, :tokens], own[:, own.shape[1] - tokens :]

    def _post_rows(self, step: int, own: torch.Tensor) -> None:
        assert self.rows is not None
        self.rows.post(step, *self._rows_to_send(own))

    def _assembled(
        self,
        own: torch.Tensor,
        parts: list[torch.Tensor | None],
        sends: list[tuple[torch.Tensor, torch.Tensor | None]],
    ) -> torch.Tensor:
        """The context ``(B, N_ctx, 2*inner)``: ``parts`` along the tokens (``None`` stands
        for ``own``), written with the ``(data, send buffer)`` pairs of ``sends`` by one
        ``copies`` call."""
        assert self.copies is not None
        batch, _, channels = own.shape
        blocks = [own if part is None else part for part in parts]
        context = own.new_empty((batch, sum(b.shape[1] for b in blocks), channels))
        flat = context.view(batch, -1)
        copies: CopyList = []
        start = 0
        for block in blocks:
            size = block.shape[1] * channels
            copies.append((block.view(batch, -1), flat[:, start : start + size]))
            start += size
        copies += [(data.view(batch, -1), buffer.view(batch, -1)) for data, buffer in sends
                   if buffer is not None]  # fmt: skip
        self.copies(copies)
        return context

    def _displaced_fused(self, own: torch.Tensor) -> torch.Tensor | None:
        """A displaced step's context through ``copies`` (posting this step's data), or
        ``None`` when the send buffers are not on the compute device."""
        clock = self.clock
        previous = clock.step - 1
        posting = clock.posts_for_next
        if self.pattern == "full":
            assert self.blocks is not None
            send = self.blocks.fillable_send(clock.step) if posting else None
            if posting and send is None:
                return None
            context = self._assembled(own, self.blocks.wait(previous), [(own, send)])
            if posting:
                self.blocks.post_filled(clock.step)
            return context
        assert self.rows is not None
        buffers = self.rows.fillable_sends(clock.step) if posting else (None, None)
        if buffers is None:
            return None
        if clock.previous_kind == "sync":
            assert self.blocks is not None
            above, below = self._neighbour_rows_from_blocks(self.blocks.wait(previous))
        else:
            above, below = self.rows.wait(previous)
        parts: list[torch.Tensor | None] = [] if above is None else [above]
        parts.append(None)
        if below is not None:
            parts.append(below)
        sends = list(zip(self._rows_to_send(own), buffers, strict=True))
        context = self._assembled(own, parts, sends)
        if posting:
            self.rows.post_filled(clock.step)
        return context

    def context(self, own: torch.Tensor) -> torch.Tensor:
        """K/V context ``(B, N_ctx, 2*inner)`` for this band's fresh ``own`` ``(B, N, 2*inner)``."""
        clock = self.clock
        if clock.kind == "local" or self.blocks is None:
            return own
        if clock.fresh:
            self.blocks.post(clock.step, own)
            return self._with_blocks(own, self.blocks.wait(clock.step))
        if self.copies is not None and own.is_contiguous():
            context = self._displaced_fused(own)
            if context is not None:
                return context
        previous = clock.step - 1
        if self.pattern == "full":
            if clock.posts_for_next:
                self.blocks.post(clock.step, own)
            return self._with_blocks(own, self.blocks.wait(previous))
        if clock.posts_for_next:
            self._post_rows(clock.step, own)
        if clock.previous_kind == "sync":
            above, below = self._neighbour_rows_from_blocks(self.blocks.wait(previous))
        else:
            assert self.rows is not None
            above, below = self.rows.wait(previous)
        parts = [p for p in (above, own, below) if p is not None]
        return torch.cat(parts, dim=1) if len(parts) > 1 else own

    # -------------------------------------------------------------- the processor call
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
            raise ValueError("BandSelfAttnProcessor handles unmasked self-attention only")
        if hidden_states.ndim != 3 or attn.spatial_norm is not None or attn.group_norm is not None:
            raise ValueError("BandSelfAttnProcessor expects (B, N, C) tokens without inner norms")
        residual = hidden_states
        batch = hidden_states.shape[0]
        query = attn.to_q(hidden_states)
        own = self._keys_values(attn, hidden_states)
        inner = own.shape[-1] // 2
        context = self.context(own)
        key, value = context[..., :inner], context[..., inner:]
        head_dim = inner // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.reshape(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.reshape(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        out = F.scaled_dot_product_attention(query, key, value, scale=attn.scale)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor
