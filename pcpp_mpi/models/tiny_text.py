"""The tiny model's tokenizer and text encoder.

**Tokenizer.** Word level, built from the scene generator's vocabulary
(:func:`pcpp_mpi.models.tiny_vocab.token_strings`): lower-cased letter runs are words; a known word
is its own token, an unknown word goes to one of ``UNKNOWN_BUCKETS`` ``<unkK>`` tokens chosen by
a CRC-32 of the word (deterministic on every platform), so different unknown words usually
differ but carry no trained meaning; prompts are cut or padded with ``<pad>`` (id 0) to
``SEQ_LEN`` tokens. The empty prompt is all padding: the unconditional input for guidance.

**Text encoder.** Token + position embeddings, a small pre-norm transformer (full attention,
padding included, so the output for a prompt never depends on the batch), a final LayerNorm
and a linear map to the UNet's cross-attention width.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from pcpp_mpi.models.tiny_vocab import UNKNOWN_BUCKETS, split_words, token_strings

SEQ_LEN = 16
PAD_ID = 0


class WordTokenizer:
    """Deterministic word-level tokenizer over the shapes vocabulary."""

    def __init__(self, seq_len: int = SEQ_LEN) -> None:
        self.seq_len = seq_len
        self.tokens: tuple[str, ...] = token_strings()
        self.ids: dict[str, int] = {token: i for i, token in enumerate(self.tokens)}
        self.unknown_base = self.ids["<unk0>"]

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def is_unknown(self, token_id: int) -> bool:
        return self.unknown_base <= token_id < self.unknown_base + UNKNOWN_BUCKETS

    def word_id(self, word: str) -> int:
        """The id of one (lower-case) word; unknown words hash into an ``<unkK>`` bucket."""
        known = self.ids.get(word)
        if known is not None and not word.startswith("<"):
            return known
        return self.unknown_base + zlib.crc32(word.encode()) % UNKNOWN_BUCKETS

    def encode(self, text: str) -> list[int]:
        """``seq_len`` ids: the words of ``text``, cut to ``seq_len``, then ``<pad>``."""
        ids = [self.word_id(word) for word in split_words(text)][: self.seq_len]
        return ids + [PAD_ID] * (self.seq_len - len(ids))

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        """``(B, seq_len)`` int64 ids of a batch of prompts."""
        if isinstance(texts, str):
            raise TypeError("the tokenizer takes a sequence of prompts, not a single string")
        return torch.tensor([self.encode(text) for text in texts], dtype=torch.int64)

    def decode(self, ids: Sequence[int]) -> str:
        """The words of ``ids`` (padding dropped, every unknown bucket shown as ``<unk>``)."""
        words = []
        for token_id in ids:
            token_id = int(token_id)
            if token_id == PAD_ID:
                continue
            words.append("<unk>" if self.is_unknown(token_id) else self.tokens[token_id])
        return " ".join(words)


@dataclass(frozen=True)
class TextEncoderConfig:
    vocab_size: int
    seq_len: int = SEQ_LEN
    width: int = 64
    layers: int = 2
    heads: int = 4
    mlp_ratio: int = 4
    out_dim: int = 32


class _Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, c // self.heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        attended = nn.functional.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(attended.transpose(1, 2).reshape(b, n, c))
        return x + self.mlp(self.norm2(x))


class TinyTextEncoder(nn.Module):
    """Token ids ``(B, seq)`` -> hidden states ``(B, seq, out_dim)``."""

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.position_embedding = nn.Parameter(torch.zeros(config.seq_len, config.width))
        self.blocks = nn.ModuleList(
            _Block(config.width, config.heads, config.mlp_ratio) for _ in range(config.layers)
        )
        self.norm = nn.LayerNorm(config.width)
        self.out = nn.Linear(config.width, config.out_dim)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding, std=0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(ids) + self.position_embedding[: ids.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.out(self.norm(x))
