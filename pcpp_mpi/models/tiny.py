"""The built-in ``tiny`` model: a small text-to-image model trained on procedural shapes.

Three trained parts, all in one committed safetensors file
(``pcpp_mpi/models/weights/tiny.safetensors``, written by ``tools/train_tiny.py``):

- a word-level tokenizer over the scene generator's vocabulary and a small transformer text
  encoder (:mod:`pcpp_mpi.models.tiny_text`), giving ``(B, 16, 32)`` hidden states;
- a diffusers ``UNet2DConditionModel`` with 3 resolution levels (32, 64, 128 channels),
  cross- and self-attention in levels 0-1 and the mid block, GroupNorm everywhere;
- a small ``AutoencoderKL`` (8 pixels per latent element, 4 latent channels, no attention)
  whose decoder turns the gathered latent into pixels.

The architecture lives in this module; the file holds the weights and, as metadata, the
latent scaling factor measured at training time, the vocabulary fingerprint and the configs
it was trained with (the loader refuses a file whose configs or vocabulary differ from the
code's). Weights are stored in float16 and loaded as float32 on the CPU, then cast and moved,
so every rank and every process gets bitwise-identical weights. Nothing is downloaded.
See docs/TINY_MODEL.md.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from pcpp_mpi.models.bundle import (
    ModelBundle,
    PromptEmbeddings,
    default_scheduler_config,
    place,
    scale_factor_of,
)
from pcpp_mpi.models.configs import complete_config
from pcpp_mpi.models.errors import ModelError
from pcpp_mpi.models.tiny_text import SEQ_LEN, TextEncoderConfig, TinyTextEncoder, WordTokenizer
from pcpp_mpi.models.tiny_vocab import split_words, vocab_fingerprint

WEIGHTS_PATH = Path(__file__).with_name("weights") / "tiny.safetensors"
WEIGHTS_FORMAT = "pcpp-mpi-tiny/1"
INIT_SEED = 20240611  # initial weights before training (training seeds the rest)
CROSS_ATTENTION_DIM = 32
UNTRAINED_SCALING_FACTOR = 1.0  # placeholder when no trained weights exist (training start)
PARTS = ("unet", "vae", "text_encoder")


def tiny_unet_config() -> dict[str, Any]:
    """UNet: 3 levels (32, 64, 128), cross-attention in levels 0-1 and the mid block."""
    return complete_config(
        UNet2DConditionModel,
        {
            "sample_size": 32,
            "in_channels": 4,
            "out_channels": 4,
            "layers_per_block": 1,
            "block_out_channels": (32, 64, 128),
            "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            "mid_block_type": "UNetMidBlock2DCrossAttn",
            "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            "norm_num_groups": 8,
            "cross_attention_dim": CROSS_ATTENTION_DIM,
            "attention_head_dim": 8,
            "use_linear_projection": True,
        },
    )


def _vae_architecture() -> dict[str, Any]:
    return {
        "sample_size": 256,
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "block_out_channels": (16, 32, 32, 32),
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 8,
        # Purely convolutional: it is trained on small images and decodes large ones.
        "mid_block_add_attention": False,
    }


def tiny_vae_config(scaling_factor: float | None = None) -> dict[str, Any]:
    """VAE: 4 levels (16, 32, 32, 32), so 8 pixels per latent element; 4 latent channels.

    ``scaling_factor`` defaults to the one measured when the committed weights were trained
    (1 / std of the training latents), or 1.0 when there are no weights yet.
    """
    if scaling_factor is None:
        scaling_factor = committed_scaling_factor()
    return complete_config(
        AutoencoderKL, {**_vae_architecture(), "scaling_factor": float(scaling_factor)}
    )


def tiny_text_config() -> TextEncoderConfig:
    """Text encoder: width 64, 2 layers, 4 heads, output width = the UNet's cross-attention."""
    return TextEncoderConfig(
        vocab_size=WordTokenizer().vocab_size, seq_len=SEQ_LEN, out_dim=CROSS_ATTENTION_DIM
    )


def tiny_vae_scale_factor() -> int:
    """Pixels per latent element of the tiny VAE (8)."""
    return scale_factor_of(_vae_architecture()["block_out_channels"])


class TinyPromptEncoder:
    """The tiny model's :class:`~pcpp_mpi.models.bundle.PromptEncoder`: tokenizer + encoder.

    Always float32 on the CPU (it is small), whatever the UNet's device and dtype, and one
    prompt at a time, so a prompt's embeddings are bitwise identical on every rank and never
    depend on the other prompts of the batch; ``pooled`` is ``None``.
    """

    def __init__(self, tokenizer: WordTokenizer, encoder: TinyTextEncoder) -> None:
        self.tokenizer = tokenizer
        self.encoder = encoder.to(device="cpu", dtype=torch.float32).eval().requires_grad_(False)

    def truncation(self, prompt: str) -> str | None:
        """Whether the word-level tokenizer cuts ``prompt`` to its ``seq_len`` words."""
        words = len(split_words(prompt))
        if words <= self.tokenizer.seq_len:
            return None
        return f"{words} words, the tiny model reads the first {self.tokenizer.seq_len}"

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> PromptEmbeddings:
        """Embed B prompts: hidden ``(B, 16, 32)`` float32 on the CPU, pooled ``None``."""
        if isinstance(prompts, str):
            raise TypeError("encode() takes a sequence of prompts, not a single string")
        if len(prompts) == 0:
            raise ValueError("encode() needs at least one prompt")
        hidden = torch.cat([self.encoder(self.tokenizer([prompt])) for prompt in prompts])
        return PromptEmbeddings(hidden=hidden.float().contiguous(), pooled=None)


def build_tiny_modules(
    scaling_factor: float | None = None, init_seed: int = INIT_SEED
) -> tuple[UNet2DConditionModel, AutoencoderKL, TinyTextEncoder]:
    """Untrained UNet, VAE and text encoder (float32, CPU) from ``init_seed``; the global RNG
    is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        unet = UNet2DConditionModel(**tiny_unet_config())
        vae = AutoencoderKL(**tiny_vae_config(scaling_factor))
        text_encoder = TinyTextEncoder(tiny_text_config())
    return unet, vae, text_encoder


def _configs_json(scaling_factor: float) -> dict[str, str]:
    def dump(config: dict[str, Any]) -> str:
        return json.dumps(config, sort_keys=True, default=list)

    text = dict(tiny_text_config().__dict__)
    return {
        "unet_config": dump(tiny_unet_config()),
        "vae_config": dump(tiny_vae_config(scaling_factor)),
        "text_encoder_config": dump(text),
    }


def save_parts(
    path: str | Path, parts: dict[str, torch.nn.Module], metadata: dict[str, str]
) -> Path:
    """Write each module's state dict under ``<part>.`` as one float16 safetensors file."""
    tensors: dict[str, torch.Tensor] = {}
    for part, module in parts.items():
        for key, value in module.state_dict().items():
            tensors[f"{part}.{key}"] = value.detach().to("cpu", torch.float16).contiguous()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path


def load_parts(path: str | Path, parts: dict[str, torch.nn.Module]) -> None:
    """Load ``<part>.*`` tensors of a :func:`save_parts` file into each module (upcast to the
    module's float32, strict), then freeze it (eval, no gradients); ModelError if they don't fit."""
    tensors = load_file(str(path), device="cpu")
    for part, module in parts.items():
        prefix = f"{part}."
        state = {k[len(prefix) :]: v.float() for k, v in tensors.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ModelError(f"{path}: {part} weights do not fit the model: {exc}") from exc
        module.requires_grad_(False).eval()


def save_tiny_weights(
    path: str | Path,
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    text_encoder: TinyTextEncoder,
    scaling_factor: float,
    extra_metadata: dict[str, str] | None = None,
) -> Path:
    """Write the three parts as one float16 safetensors file with the tiny-model metadata."""
    metadata = weights_metadata(
        WEIGHTS_FORMAT, scaling_factor, _configs_json(scaling_factor), extra_metadata
    )
    parts = dict(zip(PARTS, (unet, vae, text_encoder), strict=True))
    return save_parts(path, parts, metadata)


def weights_metadata(
    weights_format: str,
    scaling_factor: float,
    configs: dict[str, str],
    extra_metadata: dict[str, str] | None = None,
) -> dict[str, str]:
    """A built-in model's weights-file metadata: ``extra_metadata`` (training records), the
    format tag, the VAE scaling factor, the vocabulary fingerprint and the configs (JSON)."""
    return {
        **(extra_metadata or {}),
        "format": weights_format,
        "vae_scaling_factor": repr(float(scaling_factor)),
        "vocab_fingerprint": vocab_fingerprint(),
        **configs,
    }


def read_metadata(
    path: str | Path = WEIGHTS_PATH, weights_format: str = WEIGHTS_FORMAT
) -> dict[str, str]:
    """The metadata of a weights file of ``weights_format`` (ModelError if missing or foreign)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(
            f"tiny model weights not found at {path}; train them with tools/train_tiny.py"
        )
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if metadata.get("format") != weights_format:
        raise ModelError(f"{path} is not a tiny-model weights file ({weights_format})")
    return metadata


def check_metadata(path: str | Path, metadata: dict[str, str], configs: dict[str, str]) -> None:
    """Refuse a weights file trained with another vocabulary or other ``configs`` (JSON)."""
    if metadata.get("vocab_fingerprint") != vocab_fingerprint():
        raise ModelError(
            f"{path} was trained with another shapes vocabulary; retrain with tools/train_tiny.py"
        )
    for key, value in configs.items():
        if json.loads(metadata.get(key, "null")) != json.loads(value):
            raise ModelError(
                f"{path}: its {key} differs from the code's; retrain with tools/train_tiny.py"
            )


@cache
def committed_scaling_factor() -> float:
    """The VAE latent scaling factor recorded in the committed weights (1.0 if none)."""
    if not WEIGHTS_PATH.is_file():
        return UNTRAINED_SCALING_FACTOR
    return float(read_metadata(WEIGHTS_PATH)["vae_scaling_factor"])


def load_tiny_modules(
    path: str | Path = WEIGHTS_PATH,
) -> tuple[UNet2DConditionModel, AutoencoderKL, TinyTextEncoder, dict[str, str]]:
    """The trained UNet, VAE and text encoder (float32, CPU, eval, no gradients) and the
    file's metadata; refuses a file trained for another architecture or vocabulary."""
    metadata = read_metadata(path)
    scaling_factor = float(metadata["vae_scaling_factor"])
    check_metadata(path, metadata, _configs_json(scaling_factor))
    modules = build_tiny_modules(scaling_factor)
    load_parts(path, dict(zip(PARTS, modules, strict=True)))
    unet, vae, text_encoder = modules
    return unet, vae, text_encoder, metadata


def tiny_prompt_encoder() -> TinyPromptEncoder:
    """Prompt -> hidden (B, 16, 32) float32 CPU, from the committed text encoder weights."""
    _, _, text_encoder, _ = load_tiny_modules()
    return TinyPromptEncoder(WordTokenizer(), text_encoder)


def load_tiny(dtype: torch.dtype, device: torch.device) -> ModelBundle:
    """The trained tiny model in eval mode, without gradients, in ``dtype`` on ``device``
    (the prompt encoder stays float32 on the CPU)."""
    unet, vae, text_encoder, _ = load_tiny_modules()
    for module in (unet, vae):
        place(module, torch.device(device), dtype)
    return ModelBundle(
        denoiser=unet,
        vae=vae,
        encoder=TinyPromptEncoder(WordTokenizer(), text_encoder),
        scheduler_config=default_scheduler_config(),
        vae_scale_factor=tiny_vae_scale_factor(),
    )
