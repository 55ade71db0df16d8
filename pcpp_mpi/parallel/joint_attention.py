"""Joint attention of image and text tokens (SD3's MMDiT) over a band.

In an SD3 block one attention runs over the concatenation of the image tokens and the text
tokens: both streams are queries, both are keys and values. On a band:

- queries: the band's image tokens (local, ``(B, N, inner)``), then every text token
  (``(B, T, inner)``; none in a ``context_pre_only`` block, whose text outputs are discarded);
- keys and values: the image context exactly as :class:`BandSelfAttnProcessor` builds it for
  the mode and step (the band's fresh K/V plus every other band's fresh K/V in ``sync``, their
  previous step's in ``distrifusion``, the neighbours' boundary rows in ``pcpp``), then the
  text tokens' own K/V. The text is replicated on every rank: its K/V are computed locally and
  never exchanged.

The token order is diffusers' (image first, then text), so in ``sync`` a band's image queries
and every rank's text queries see what one GPU sees: the text stream stays identical on every
rank. In the displaced modes a rank's text queries attend to its own (partly stale, in
``pcpp`` partial) image context, so the text stream drifts a little apart between ranks; each
rank keeps its own, nothing more is exchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from pcpp_mpi.parallel.band_attention import BandSelfAttnProcessor


def is_joint_attention(attn: Attention) -> bool:
    """An attention layer with projections of a second token stream (``add_k_proj``...)."""
    return getattr(attn, "added_kv_proj_dim", None) is not None


class JointBandAttnProcessor(BandSelfAttnProcessor):
    """Attention processor for one joint (image + text) attention layer of one band.

    Called with ``encoder_hidden_states`` (the text stream ``(B, T, C)``, global: the same on
    every rank) it returns ``(image_out (B, N, C), text_out (B, T, C))``, ``text_out`` being
    ``None`` in a ``context_pre_only`` layer; without it (a plain self-attention call) it is
    :class:`BandSelfAttnProcessor`. With ``ops`` the image context and the attention run behind
    the ``joint_attention`` operator.
    """

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        if encoder_hidden_states is None:
            return super().__call__(attn, hidden_states, None, attention_mask, temb, **kwargs)
        if attention_mask is not None:
            raise ValueError("JointBandAttnProcessor handles unmasked joint attention only")
        if hidden_states.ndim != 3:
            raise ValueError("JointBandAttnProcessor expects (B, N, C) image tokens")
        text = encoder_hidden_states
        n_image = hidden_states.shape[1]
        query = attn.to_q(hidden_states)
        if not attn.context_pre_only:  # the text's outputs are used: it queries too
            query = torch.cat([query, attn.add_q_proj(text)], dim=1)
        text_kv = torch.cat([attn.add_k_proj(text), attn.add_v_proj(text)], dim=-1)
        if self._ops is not None and self.blocks is not None and self.clock.phase != "local":
            out = self._ops.joint_attention(query, hidden_states, text_kv, self._op_index)
        else:
            context = self._image_context(attn, hidden_states)
            out = self._attend_joint(attn, query, context, text_kv, n_image)
        image_out = self._output(attn, out[:, :n_image], hidden_states)
        if attn.context_pre_only:
            return image_out, None
        return image_out, attn.to_add_out(out[:, n_image:])

    def _image_context(self, attn: Attention, hidden_states: torch.Tensor) -> torch.Tensor:
        """The image K/V context ``(B, N_ctx, 2*inner)`` outside the operator: the band's own
        (traced, or a ``local`` step) or assembled with the exchanged K/V (eager)."""
        if self._ops is not None:
            return torch.cat([attn.to_k(hidden_states), attn.to_v(hidden_states)], dim=-1)
        if self.blocks is not None and self.clock.kind != "local":
            return self._exchanged_context(attn, hidden_states)
        return self._keys_values(attn, hidden_states)

    def attend_joint(
        self,
        attn: Attention,
        query: torch.Tensor,
        hidden_states: torch.Tensor,
        text_kv: torch.Tensor,
    ) -> torch.Tensor:
        """Behind the ``joint_attention`` operator: ``query`` ``(B, N + Tq, inner)`` (the
        band's image queries, then the text's, ``Tq`` 0 or ``T``) attending to this step's
        image context (projected from the band's tokens ``hidden_states`` ``(B, N, C)``, as
        :meth:`attend_exchanged` does) followed by ``text_kv`` ``(B, T, 2*inner)``; a new
        tensor ``(B, N + Tq, inner)``."""
        context = self._exchanged_context(attn, hidden_states)
        out = self._attend_joint(attn, query, context, text_kv, hidden_states.shape[1])
        return out.contiguous()

    @staticmethod
    def _attend_joint(
        attn: Attention,
        query: torch.Tensor,
        context: torch.Tensor,
        text_kv: torch.Tensor,
        n_image: int,
    ) -> torch.Tensor:
        """Scaled dot-product attention of ``query`` ``(B, N + Tq, inner)`` (its first
        ``n_image`` rows image queries, the rest text queries) over the image keys and values
        of ``context`` ``(B, N_ctx, 2*inner)`` followed by the text's ``text_kv``
        ``(B, T, 2*inner)``; the image and text parts get their own qk norms (SD3.5);
        ``(B, N + Tq, inner)``."""
        batch = query.shape[0]
        inner = context.shape[-1] // 2
        head_dim = inner // attn.heads

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(batch, -1, attn.heads, head_dim).transpose(1, 2)

        image_q, text_q = heads(query[:, :n_image]), heads(query[:, n_image:])
        image_k, image_v = heads(context[..., :inner]), heads(context[..., inner:])
        text_k, text_v = heads(text_kv[..., :inner]), heads(text_kv[..., inner:])
        if attn.norm_q is not None:
            image_q = attn.norm_q(image_q)
        if attn.norm_k is not None:
            image_k = attn.norm_k(image_k)
        if attn.norm_added_q is not None and text_q.shape[2]:
            text_q = attn.norm_added_q(text_q)
        if attn.norm_added_k is not None:
            text_k = attn.norm_added_k(text_k)
        q = torch.cat([image_q, text_q], dim=2)
        k = torch.cat([image_k, text_k], dim=2)
        v = torch.cat([image_v, text_v], dim=2)
        out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
        return out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
