"""Build a tiny local SD3 diffusers folder for tests; nothing is downloaded.

``make_sd3_folder(tmp_path / "sd3")`` writes what ``StableDiffusion3Pipeline`` saves:
``model_index.json``, ``transformer/`` (the tiny SD3 configuration of
:mod:`pcpp_mpi.models.sd3`: SD3.5's dual attention and RMS qk norms, random weights from a
fixed seed), ``vae/`` (SD3's VAE shape, narrow), ``scheduler/`` (flow-matching Euler, shift
3), ``text_encoder/`` and ``text_encoder_2/`` (CLIP text models with projection, widths 8 and
16), ``tokenizer/`` and ``tokenizer_2/`` (a byte-level CLIP BPE written here) and, unless
``t5=False``, ``text_encoder_3/`` (a one-layer T5 encoder of width 32) with ``tokenizer_3/``
(the word-level T5 fast tokenizer of :mod:`tiny_t5`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from model_folder import write_clip_vocab
from tiny_t5 import T5_DIM, t5_tokenizer, tiny_t5_config
from transformers import (
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5EncoderModel,
)

from pcpp_mpi.models.sd3 import sd3_scheduler_config, tiny_sd3_config, tiny_sd3_vae_config

CLIP_DIMS = (8, 16)  # CLIP-L, CLIP-G stand-ins: hidden width = projection width


def _clip(dim: int, bos: int, eos: int) -> CLIPTextModelWithProjection:
    config = CLIPTextConfig(
        vocab_size=eos + 1,
        hidden_size=dim,
        intermediate_size=2 * dim,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=dim,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    return CLIPTextModelWithProjection(config)


def make_sd3_folder(path: Path, *, t5: bool = True, seed: int = 0) -> Path:
    """Write a tiny StableDiffusion3Pipeline folder at ``path`` (without the T5 side when
    ``t5`` is false, as diffusers saves a pipeline made with ``text_encoder_3=None``)."""
    path = Path(path)
    vocab_dir = path / "_vocab"
    bos, eos = write_clip_vocab(vocab_dir)
    clip_tokenizer = CLIPTokenizer.from_pretrained(vocab_dir, model_max_length=77)
    shutil.rmtree(vocab_dir)
    tokenizer_3 = t5_tokenizer()
    t5_config = tiny_t5_config(tokenizer_3)
    config = tiny_sd3_config(joint_attention_dim=T5_DIM, pooled_projection_dim=sum(CLIP_DIMS))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel(**config)
        vae = AutoencoderKL(**tiny_sd3_vae_config())
        text_encoder, text_encoder_2 = (_clip(dim, bos, eos) for dim in CLIP_DIMS)
        text_encoder_3 = T5EncoderModel(t5_config) if t5 else None
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(sd3_scheduler_config()),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=clip_tokenizer,
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3 if t5 else None,
    )
    pipe.save_pretrained(path)
    return path
