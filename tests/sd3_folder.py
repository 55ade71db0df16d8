"""Build a tiny local SD3 diffusers folder for tests; nothing is downloaded.

``make_sd3_folder(tmp_path / "sd3")`` writes what ``StableDiffusion3Pipeline`` saves:
``model_index.json``, ``transformer/`` (the tiny SD3 configuration of
:mod:`pcpp_mpi.models.sd3`: SD3.5's dual attention and RMS qk norms, random weights from a
fixed seed), ``vae/`` (SD3's VAE shape, narrow), ``scheduler/`` (flow-matching Euler, shift
3), ``text_encoder/`` and ``text_encoder_2/`` (CLIP text models with projection, widths 8 and
16), ``tokenizer/`` and ``tokenizer_2/`` (a byte-level CLIP BPE written here) and, unless
``t5=False``, ``text_encoder_3/`` (a one-layer T5 encoder of width 32) with ``tokenizer_3/``
(a T5 fast tokenizer over a few words; no sentencepiece needed).
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
from transformers import (
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

from pcpp_mpi.models.sd3 import sd3_scheduler_config, tiny_sd3_config, tiny_sd3_vae_config

T5_DIM = 32
CLIP_DIMS = (8, 16)  # CLIP-L, CLIP-G stand-ins: hidden width = projection width
WORDS = ("a", "cat", "dog", "red", "blue", "circle", "square", "on", "the", "photo", "of")


def t5_tokenizer() -> T5TokenizerFast:
    """A T5 fast tokenizer over whole words: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2."""
    pieces = [(token, 0.0) for token in ("<pad>", "</s>", "<unk>")]
    pieces += [("\u2581", -2.0)] + [("\u2581" + word, -1.0) for word in WORDS]
    return T5TokenizerFast(vocab=pieces, extra_ids=0)


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
    t5_config = T5Config(
        vocab_size=len(tokenizer_3),
        d_model=T5_DIM,
        d_kv=8,
        d_ff=37,
        num_layers=1,
        num_heads=4,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
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
