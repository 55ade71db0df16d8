"""A tiny T5 text side for the test folders (PixArt's, SD3's ``text_encoder_3``): a word-level
T5 fast tokenizer built here (a unigram model over a few words, as a real T5
``tokenizer.json`` holds one; no sentencepiece needed) and a one-layer encoder config of
width :data:`T5_DIM`. Nothing is downloaded."""

from __future__ import annotations

from transformers import T5Config, T5TokenizerFast

T5_DIM = 32
WORDS = ("a", "cat", "dog", "red", "blue", "circle", "square", "on", "the", "photo", "of")
SPECIAL = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2, as in T5


def t5_tokenizer() -> T5TokenizerFast:
    """A T5 fast tokenizer over a unigram vocabulary of whole words (``"\u2581cat"``):
    ``<pad>`` 0, ``</s>`` 1 (appended to every prompt), ``<unk>`` 2 for anything else."""
    pieces = [(token, 0.0) for token in SPECIAL]
    pieces += [("\u2581", -2.0)] + [("\u2581" + word, -1.0) for word in WORDS]
    return T5TokenizerFast(vocab=pieces, extra_ids=0)


def tiny_t5_config(tokenizer: T5TokenizerFast) -> T5Config:
    """A one-layer T5 encoder of width :data:`T5_DIM` (4 heads of 8) over ``tokenizer``'s
    vocabulary."""
    return T5Config(
        vocab_size=len(tokenizer),
        d_model=T5_DIM,
        d_kv=8,
        d_ff=37,
        num_layers=1,
        num_heads=4,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
