"""Build a small local diffusers folder (SD- or SDXL-style) for tests; nothing is downloaded.

``make_model_folder(tmp_path / "sd")`` writes ``model_index.json``, ``unet/``, ``vae/``,
``scheduler/``, ``tokenizer/`` and ``text_encoder/`` (plus ``tokenizer_2/`` and
``text_encoder_2/`` for ``kind="sdxl"``) with random weights from a fixed seed: a tiny UNet and
VAE, DDIM, tiny CLIP text encoders (hidden size 32) and a byte-level CLIP tokenizer whose
vocab.json/merges.txt are written here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

from pcpp_mpi.models.bundle import default_scheduler_config
from pcpp_mpi.models.tiny import tiny_unet_config, tiny_vae_config

TEXT_DIM = 32
TIME_EMBED_DIM = 8
WORDS = ("a", "cat", "dog", "red", "blue", "circle", "on", "the", "photo", "of")


def _byte_alphabet() -> list[str]:
    """The 256 printable characters byte-level BPE uses for the 256 byte values."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    extra = iter(range(256, 512))
    return [chr(b if b in printable else next(extra)) for b in range(256)]


def write_clip_vocab(directory: Path) -> tuple[int, int]:
    """Write ``vocab.json`` and ``merges.txt`` of a tiny CLIP BPE; return (bos id, eos id)."""
    alphabet = _byte_alphabet()
    vocab: dict[str, int] = {}
    for token in [*alphabet, *(c + "</w>" for c in alphabet)]:
        vocab.setdefault(token, len(vocab))
    merges: list[str] = []
    for word in WORDS:
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            merge = f"{parts[0]} {parts[1]}"
            if merge not in merges:
                merges.append(merge)
            parts = [parts[0] + parts[1], *parts[2:]]
            vocab.setdefault(parts[0], len(vocab))
    bos, eos = len(vocab), len(vocab) + 1
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = bos, eos
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return bos, eos


def _text_config(bos: int, eos: int, vocab_size: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=TEXT_DIM,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=TEXT_DIM,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=eos,
    )


def make_model_folder(path: Path, kind: Literal["sd", "sdxl"] = "sd", seed: int = 0) -> Path:
    """Write a tiny StableDiffusionPipeline (or StableDiffusionXLPipeline) folder at ``path``."""
    path = Path(path)
    vocab_dir = path / "_vocab"
    bos, eos = write_clip_vocab(vocab_dir)
    tokenizer = CLIPTokenizer.from_pretrained(vocab_dir, model_max_length=77)
    text_config = _text_config(bos, eos, vocab_size=eos + 1)
    unet_config = dict(tiny_unet_config())
    if kind == "sdxl":
        unet_config.update(
            cross_attention_dim=2 * TEXT_DIM,
            addition_embed_type="text_time",
            addition_time_embed_dim=TIME_EMBED_DIM,
            projection_class_embeddings_input_dim=6 * TIME_EMBED_DIM + TEXT_DIM,
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**unet_config)
        vae = AutoencoderKL(**tiny_vae_config())
        text_encoder = CLIPTextModel(text_config)
        text_encoder_2 = CLIPTextModelWithProjection(text_config) if kind == "sdxl" else None
    scheduler = DDIMScheduler.from_config(default_scheduler_config())
    if kind == "sdxl":
        pipe = StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer,
            unet=unet,
            scheduler=scheduler,
        )
    else:
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.save_pretrained(path)
    for file in vocab_dir.iterdir():
        file.unlink()
    vocab_dir.rmdir()
    return path
