"""A rank's exchanges as PyTorch custom operators, so ``torch.compile`` can trace a whole step.

With ``runtime.compile`` the UNet call of a step is traced by ``torch.compile`` (one graph per
step *phase*: ``local``, ``fresh``, ``stale``) and inductor fuses everything between the
exchanges: normalisations with their activations, residual additions, the concatenation of
halo rows with a band. Each point where a parallel layer meets its exchange becomes one opaque
operator call in that graph:

- ``halo(x, index) -> [rows...]``: a convolution's band ``x`` ``(B, C, h, W)`` (local) in,
  the rows received from the band above ``(B, C, above, W)`` and/or below
  ``(B, C, below, W)`` out, for the sides that have a neighbour;
- ``group_stats(local, index) -> stats``: a GroupNorm's per-group sums of this band
  ``(3, B, G)`` float64 in; the sums of every band (``fresh`` steps) or of the other bands
  from the previous step (``stale`` steps) out, same shape;
- ``attention(query, hidden, index) -> out``: a self-attention layer's queries
  ``(B, N, inner)`` and the band's tokens ``(B, N, C)`` in (the operator projects their keys
  and values straight into the exchange's frame), the attention output ``(B, N, inner)`` over
  the context the mode gives (own band, neighbours' rows, all bands);
- ``joint_attention(query, hidden, text_kv, index) -> out``: a joint (image + text) attention
  layer's queries ``(B, N + Tq, inner)`` (the band's image tokens, then ``Tq`` text tokens),
  the band's tokens ``(B, N, C)`` and the text's keys and values ``(B, T, 2*inner)`` in; the
  output ``(B, N + Tq, inner)`` over the image context the mode gives followed by the text.

Behind each operator the layer's own eager code does the posting and waiting (and, while a step
is captured as CUDA graphs, the recording), so the compiled graph itself never depends on the
step number, the buffer parity or whether the step posts for the next one. The integer
``index`` names the layer within this rank's table; the operators' inputs are never modified
and **their outputs are always new tensors**, never an exchange's receive buffer: inductor
owns an operator's outputs and reuses their memory for later temporaries once they are read,
so a returned receive buffer would be overwritten — in the dry run that compiles a phase, just
before the real step reads it (the layers' ``exchange_halo`` and ``exchange_stats`` copy: a
few small copies per step).

The operators live in a library of their own, ``pcpp_mpi_<n>`` with the first ``n`` free in
the process (so the names, and inductor's cache keys, are the same in every rank and every
run), and are removed again by :meth:`ExchangeOps.close`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch


class HaloLayer(Protocol):
    def exchange_halo(self, x: torch.Tensor) -> list[torch.Tensor]: ...

    def received_halo_shapes(self, x: torch.Tensor) -> list[tuple[int, ...]]: ...


class StatsLayer(Protocol):
    def exchange_stats(self, local: torch.Tensor) -> torch.Tensor: ...


class AttentionLayer(Protocol):
    def attend_exchanged(
        self, attn: torch.nn.Module, query: torch.Tensor, hidden_states: torch.Tensor
    ) -> torch.Tensor: ...


class JointAttentionLayer(AttentionLayer, Protocol):
    def attend_joint(
        self,
        attn: torch.nn.Module,
        query: torch.Tensor,
        hidden_states: torch.Tensor,
        text_kv: torch.Tensor,
    ) -> torch.Tensor: ...


_SCHEMAS = {
    "halo": "halo(Tensor x, int index) -> Tensor[]",
    "group_stats": "group_stats(Tensor local, int index) -> Tensor",
    "attention": "attention(Tensor query, Tensor hidden, int index) -> Tensor",
    "joint_attention": (
        "joint_attention(Tensor query, Tensor hidden, Tensor text_kv, int index) -> Tensor"
    ),
}


def _new_library() -> torch.library.Library:
    """A library of a namespace no other library of this process holds."""
    for n in range(1000):
        try:
            return torch.library.Library(f"pcpp_mpi_{n}", "DEF")
        except RuntimeError:
            continue
    raise RuntimeError("no free pcpp_mpi_<n> operator namespace (1000 exchange tables open)")


class ExchangeOps:
    """The custom operators of one rank's parallel layers, and the table they index."""

    def __init__(self) -> None:
        self._convs: list[HaloLayer] = []
        self._norms: list[StatsLayer] = []
        self._attns: list[tuple[torch.nn.Module, AttentionLayer]] = []
        self._library: torch.library.Library | None = _new_library()
        self.namespace = self._library.ns
        for schema in _SCHEMAS.values():
            self._library.define(schema)
        self._register("halo", self._halo, self._halo_fake)
        self._register("group_stats", self._group_stats, self._group_stats_fake)
        self._register("attention", self._attention, self._attention_fake)
        self._register("joint_attention", self._joint_attention, self._joint_attention_fake)
        ops = getattr(torch.ops, self.namespace)
        self.halo: Callable[[torch.Tensor, int], list[torch.Tensor]] = ops.halo
        self.group_stats: Callable[[torch.Tensor, int], torch.Tensor] = ops.group_stats
        self.attention: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor] = ops.attention
        self.joint_attention: Callable[
            [torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor
        ] = ops.joint_attention

    def _register(self, name: str, impl: Callable, fake: Callable) -> None:
        assert self._library is not None
        self._library.impl(name, impl, "CompositeExplicitAutograd")
        torch.library.register_fake(f"{self.namespace}::{name}", fake, lib=self._library)

    # ------------------------------------------------------------------ the table
    def add_conv(self, layer: HaloLayer) -> int:
        self._convs.append(layer)
        return len(self._convs) - 1

    def add_norm(self, layer: StatsLayer) -> int:
        self._norms.append(layer)
        return len(self._norms) - 1

    def add_attention(self, attn: torch.nn.Module, layer: AttentionLayer) -> int:
        self._attns.append((attn, layer))
        return len(self._attns) - 1

    def close(self) -> None:
        """Remove the operators (the layers stay usable eagerly) and forget the table."""
        if self._library is not None:
            self._library._destroy()  # the public API has no other way to unregister
            self._library = None
        self._convs.clear()
        self._norms.clear()
        self._attns.clear()

    # ------------------------------------------------------------------ implementations
    def _halo(self, x: torch.Tensor, index: int) -> list[torch.Tensor]:
        return self._convs[index].exchange_halo(x)

    def _halo_fake(self, x: torch.Tensor, index: int) -> list[torch.Tensor]:
        return [x.new_empty(shape) for shape in self._convs[index].received_halo_shapes(x)]

    def _group_stats(self, local: torch.Tensor, index: int) -> torch.Tensor:
        return self._norms[index].exchange_stats(local)

    @staticmethod
    def _group_stats_fake(local: torch.Tensor, index: int) -> torch.Tensor:
        return torch.empty_like(local)

    def _attention(self, query: torch.Tensor, hidden: torch.Tensor, index: int) -> torch.Tensor:
        attn, layer = self._attns[index]
        return layer.attend_exchanged(attn, query, hidden)

    @staticmethod
    def _attention_fake(query: torch.Tensor, hidden: torch.Tensor, index: int) -> torch.Tensor:
        return torch.empty_like(query)

    def _joint_attention(
        self, query: torch.Tensor, hidden: torch.Tensor, text_kv: torch.Tensor, index: int
    ) -> torch.Tensor:
        attn, layer = self._attns[index]
        if not hasattr(layer, "attend_joint"):
            raise TypeError(f"attention layer {index} is not a joint attention layer")
        return layer.attend_joint(attn, query, hidden, text_kv)  # type: ignore[attr-defined]

    @staticmethod
    def _joint_attention_fake(
        query: torch.Tensor, hidden: torch.Tensor, text_kv: torch.Tensor, index: int
    ) -> torch.Tensor:
        return torch.empty_like(query)
