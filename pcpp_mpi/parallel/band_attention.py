"""Self-attention over a band whose keys and values include other bands' rows.

Installed with diffusers' own extension point (``Attention.set_processor``); the attention
module, its weights and cross-attention layers stay untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from pcpp_mpi.parallel.clock import StepClock
from pcpp_mpi.parallel.exchange_ops import ExchangeOps


def _plain_linear(module: torch.nn.Module) -> bool:
    """An ``nn.Linear`` whose forward nothing wraps (no hooks, no accelerate hook)."""
    return (
        type(module) is torch.nn.Linear
        and not module._forward_hooks
        and not module._forward_pre_hooks
        and "_hf_hook" not in module.__dict__
        and "forward" not in module.__dict__
    )


def attend(attn: Attention, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product attention of ``query`` ``(B, N, inner)`` over the keys and values
    of ``context`` ``(B, N_ctx, 2*inner)`` (keys, then values, along channels), with
    ``attn``'s heads, q/k norms and scale; ``(B, N, inner)``."""
    batch = query.shape[0]
    inner = context.shape[-1] // 2
    key, value = context[..., :inner], context[..., inner:]
    head_dim = inner // attn.heads
    query = query.reshape(batch, -1, attn.heads, head_dim).transpose(1, 2)
    key = key.reshape(batch, -1, attn.heads, head_dim).transpose(1, 2)
    value = value.reshape(batch, -1, attn.heads, head_dim).transpose(1, 2)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    out = F.scaled_dot_product_attention(query, key, value, scale=attn.scale)
    return out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)


class FramedExchange(Protocol):
    def frame(self, step: int) -> tuple[torch.Tensor, torch.Tensor] | None: ...

    def post_filled(self, step: int) -> None: ...

    def wait(self, step: int) -> object: ...


class BlocksExchange(FramedExchange, Protocol):
    def post(self, step: int, own: torch.Tensor) -> None: ...

    def fresh_frame(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None: ...

    def wait(self, step: int) -> list[torch.Tensor | None]: ...


class RowExchange(FramedExchange, Protocol):
    def post(self, step: int, to_up: torch.Tensor | None, to_down: torch.Tensor | None) -> None: ...

    def wait(self, step: int) -> tuple[torch.Tensor | None, torch.Tensor | None]: ...


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

    Displaced steps whose exchanges live in :class:`~pcpp_mpi.comm.frames.TokenFrames` on the
    compute device write the band's keys and values straight into the frame (that fills the
    send buffers) and attend to the frame in place; otherwise the context is concatenated and
    the send buffers are copies.

    ``ops`` (for ``torch.compile``): the query projection and the output are traced; the key
    and value projection, the context's assembly and the attention itself run behind the
    ``attention`` operator (:class:`~pcpp_mpi.parallel.exchange_ops.ExchangeOps`,
    :meth:`attend_exchanged`), as in the eager path.
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
        ops: ExchangeOps | None = None,
        attn: Attention | None = None,
    ) -> None:
        self.clock = clock
        self.band_index = band_index
        self.pattern = pattern
        self.blocks = blocks
        self.rows = rows
        self.kv_rows = kv_rows
        self._kv_key: tuple | None = None
        self._kv_weights: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self._ops = ops
        self._op_index = -1
        if ops is not None:
            if attn is None:
                raise ValueError("BandSelfAttnProcessor: ops need the attention module")
            self._op_index = ops.add_attention(attn, self)

    # -------------------------------------------------------------- projections
    def _keys_values(
        self, attn: Attention, hidden_states: torch.Tensor, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(B, N, 2*inner)``: keys, then values, of the band's tokens, written into ``out``
        (any strides) if given. Plain linear layers run as one GEMM over their stacked weights
        (stacked once, again if they change): it saves a launch and a concatenation per layer
        and step; with ``out`` the GEMM writes there directly."""
        to_k, to_v = attn.to_k, attn.to_v
        if not (_plain_linear(to_k) and _plain_linear(to_v)) or (
            (to_k.bias is None) != (to_v.bias is None)
        ):  # adapters, hooks (offloading...): run the modules themselves
            both = torch.cat([to_k(hidden_states), to_v(hidden_states)], dim=-1)
            return both if out is None else out.copy_(both)
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
        weight, bias = self._kv_weights
        if out is None:
            return F.linear(hidden_states, weight, bias)
        stacked = weight.t().expand(hidden_states.shape[0], -1, -1)  # (B, C_in, 2*inner)
        if bias is None:
            return torch.bmm(hidden_states, stacked, out=out)
        return torch.baddbmm(bias, hidden_states, stacked, out=out)

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

    def _fresh_in_frame(self, write: Callable[[torch.Tensor], None]) -> torch.Tensor | None:
        """A ``sync`` step's context ``(B, N_total, 2*inner)``, read in place from the frame
        the other bands' fresh blocks arrive in, after sending this band's block from the
        other frame (and copying it next to theirs); ``None`` without frames on the compute
        device. ``write(out)`` writes the band's keys and values ``(B, N, 2*inner)`` there."""
        assert self.blocks is not None
        placed = self.blocks.fresh_frame(self.clock.step)
        if placed is None:
            return None
        context, send, own = placed
        write(send)
        self.blocks.post_filled(self.clock.step)
        own.copy_(send)
        self.blocks.wait(self.clock.step)
        return context

    def _displaced_in_frame(self, write: Callable[[torch.Tensor], None]) -> torch.Tensor | None:
        """A displaced step's context ``(B, N_ctx, 2*inner)``, read in place from the frame its
        exchange receives into, after writing this band's fresh keys and values there (and
        posting them for the next step); ``None`` when the exchange has no frames on the
        compute device."""
        clock = self.clock
        if self.pattern == "full":
            assert self.blocks is not None
            owner: FramedExchange = self.blocks
            source: FramedExchange = self.blocks
        else:
            assert self.rows is not None and self.blocks is not None
            owner = self.rows
            # after a sync step the neighbours' rows came with the blocks (same frames)
            source = self.blocks if clock.previous_kind == "sync" else self.rows
        placed = owner.frame(clock.step)
        if placed is None:
            return None
        context, own = placed
        write(own)
        if clock.posts_for_next:
            owner.post_filled(clock.step)
        source.wait(clock.step - 1)
        return context

    def context(self, own: torch.Tensor) -> torch.Tensor:
        """K/V context ``(B, N_ctx, 2*inner)`` for this band's fresh ``own`` ``(B, N, 2*inner)``."""
        clock = self.clock
        if clock.kind == "local" or self.blocks is None:
            return own
        if clock.fresh:
            self.blocks.post(clock.step, own)
            return self._with_blocks(own, self.blocks.wait(clock.step))
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
        query = attn.to_q(hidden_states)
        if self._ops is not None:
            if self.blocks is not None and self.clock.phase != "local":
                out = self._ops.attention(query, hidden_states, self._op_index)
            else:
                kv = torch.cat([attn.to_k(hidden_states), attn.to_v(hidden_states)], dim=-1)
                out = attend(attn, query, kv)
            return self._output(attn, out, residual)
        clock = self.clock
        context = None
        if self.blocks is not None and clock.kind != "local":
            context = self._exchanged_context(attn, hidden_states)
        else:
            context = self._keys_values(attn, hidden_states)
        return self._output(attn, attend(attn, query, context), residual)

    def _exchanged_context(self, attn: Attention, hidden_states: torch.Tensor) -> torch.Tensor:
        """This step's K/V context ``(B, N_ctx, 2*inner)`` for the band's tokens
        ``hidden_states`` ``(B, N, C)``: their keys and values are computed straight into the
        frame the exchange sends from when it has one (no copy), else computed and assembled
        with the other bands' (:meth:`context`)."""

        def write(out: torch.Tensor) -> None:
            self._keys_values(attn, hidden_states, out=out)

        if self.clock.fresh:
            context = self._fresh_in_frame(write)
        else:
            context = self._displaced_in_frame(write)
        if context is None:
            context = self.context(self._keys_values(attn, hidden_states))
        return context

    def attend_exchanged(
        self, attn: Attention, query: torch.Tensor, hidden_states: torch.Tensor
    ) -> torch.Tensor:
        """Behind the ``attention`` operator: the band's queries ``(B, N, inner)`` attending
        to this step's context, whose fresh keys and values are projected from the band's
        tokens ``hidden_states`` ``(B, N, C)`` inside the operator, by the eager path's one
        GEMM straight into the exchange's frame (traced, the projections, a concatenation and
        a copy into the frame were three more kernels per layer); ``(B, N, inner)``."""
        context = self._exchanged_context(attn, hidden_states)
        return attend(attn, query, context).contiguous()

    @staticmethod
    def _output(attn: Attention, out: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """The output projection of the attention result ``out`` ``(B, N, inner)``."""
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor
