"""Build a tiny local PixArt diffusers folder for tests; nothing is downloaded.

``make_pixart_folder(tmp_path / "pixart")`` writes what ``PixArtAlphaPipeline`` (or, with
``sigma=True``, ``PixArtSigmaPipeline``) saves: ``model_index.json``, ``transformer/`` (the
tiny PixArt configuration of :mod:`pcpp_mpi.models.pixart`, random weights from a fixed
seed), ``vae/`` (the tiny VAE), ``scheduler/`` (DDIM), ``text_encoder/`` (a one-layer T5 encoder of
width 32) and ``tokenizer/`` (the word-level T5 fast tokenizer of :mod:`tiny_t5`).
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
from tiny_t5 import T5_DIM, t5_tokenizer, tiny_t5_config
from transformers import T5EncoderModel

from pcpp_mpi.models.bundle import default_scheduler_config
from pcpp_mpi.models.pixart import tiny_pixart_config
from pcpp_mpi.models.tiny import tiny_vae_config


def make_pixart_folder(
    path: Path, *, sigma: bool = False, size_conditioning: bool = True, seed: int = 0
) -> Path:
    """Write a tiny PixArt pipeline folder at ``path``. ``size_conditioning``: the transformer
    takes PixArt-alpha's resolution and aspect-ratio conditioning."""
    path = Path(path)
    tokenizer = t5_tokenizer()
    text_config = tiny_t5_config(tokenizer)
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
