"""Build a tiny local PixArt diffusers folder for tests; nothing is downloaded.

``make_pixart_folder(tmp_path / "pixart")`` writes what ``PixArtAlphaPipeline`` (or, with
``sigma=True``, ``PixArtSigmaPipeline``) saves: ``model_index.json``, ``transformer/`` (the
tiny PixArt configuration of :mod:`pcpp_mpi.models.pixart`, random weights from a fixed
seed), ``vae/`` (the tiny VAE), ``scheduler/`` (DDIM), ``text_encoder/`` (a one-layer T5 encoder of
width 32) and ``tokenizer/`` (a word-level T5 fast tokenizer whose ``tokenizer.json`` is built
here: a unigram model over a few words, as a real T5 ``tokenizer.json`` holds one; no
sentencepiece needed).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    PixArtAlphaPipeline,
    PixArtSigmaPipeline,
    PixArtTransformer2DModel,
)
from transformers import T5Config, T5EncoderModel, T5TokenizerFast

from pcpp_mpi.models.bundle import default_scheduler_config
from pcpp_mpi.models.pixart import tiny_pixart_config
from pcpp_mpi.models.tiny import tiny_vae_config

T5_DIM = 32
WORDS = ("a", "cat", "dog", "red", "blue", "circle", "square", "on", "the", "photo", "of")
SPECIAL = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2, as in T5


def t5_tokenizer() -> T5TokenizerFast:
    """A T5 fast tokenizer over a unigram vocabulary of whole words (``"\u2581cat"``):
    ``<pad>`` 0, ``</s>`` 1 (appended to every prompt), ``<unk>`` 2 for anything else."""
    pieces = [(token, 0.0) for token in SPECIAL]
    pieces += [("\u2581", -2.0)] + [("\u2581" + word, -1.0) for word in WORDS]
    return T5TokenizerFast(vocab=pieces, extra_ids=0)


def make_pixart_folder(
    path: Path, *, sigma: bool = False, size_conditioning: bool = True, seed: int = 0
) -> Path:
    """Write a tiny PixArt pipeline folder at ``path``. ``size_conditioning``: the transformer
    takes PixArt-alpha's resolution and aspect-ratio conditioning."""
    path = Path(path)
    tokenizer = t5_tokenizer()
    text_config = T5Config(
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
    config = tiny_pixart_config(
        caption_channels=T5_DIM, use_additional_conditions=size_conditioning
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = PixArtTransformer2DModel(**config)
        vae = AutoencoderKL(**tiny_vae_config())
        text_encoder = T5EncoderModel(text_config)
    # the SD schedule, as the UNet test folders: PixArt's linear betas end at alpha_bar 4e-5,
    # where random-weight predictions blow the latent up to |x| ~ 250 (float32 rounding of a
    # changed batch then exceeds the tests' absolute 1e-4)
    scheduler = DDIMScheduler.from_config(default_scheduler_config())
    pipeline = PixArtSigmaPipeline if sigma else PixArtAlphaPipeline
    pipe = pipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=scheduler,
    )
    pipe.save_pretrained(path)
    return path
