"""What a loaded model is: a denoising network (a UNet or a diffusion transformer), a VAE, a
prompt encoder and a scheduler configuration."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from diffusers import AutoencoderKL


@dataclass(frozen=True)
class PromptEmbeddings:
    """Text conditioning for B prompts.

    ``hidden``: (B, seq, dim) encoder hidden states for the network's cross-attention;
    ``pooled``: (B, pooled_dim) pooled text embedding for SDXL-type models, else ``None``;
    ``mask``: (B, seq) attention mask of the tokens (1 = a token, 0 = padding) for encoders
    whose padding the network must ignore (PixArt's T5), else ``None`` (every position counts).
    """

    hidden: torch.Tensor
    pooled: torch.Tensor | None
    mask: torch.Tensor | None = None


class PromptEncoder(Protocol):
    """Turns prompts into :class:`PromptEmbeddings` (float32 CPU tensors; deterministic)."""

    def encode(self, prompts: Sequence[str]) -> PromptEmbeddings: ...

    def truncation(self, prompt: str) -> str | None:
        """How ``prompt`` is cut to the encoder's context (e.g. ``"90 tokens, reads 77"``),
        or ``None`` when it is read whole."""
        ...


def default_scheduler_config() -> dict[str, Any]:
    """The Stable Diffusion noise schedule, for models that ship without a ``scheduler/``."""
    return {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "prediction_type": "epsilon",
        "steps_offset": 1,
        "set_alpha_to_one": False,
        "clip_sample": False,
        "timestep_spacing": "leading",
    }


def place(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Move ``module`` to ``device`` and cast its floating-point tensors to ``dtype``, in place.

    Goes through :meth:`torch.nn.Module.to`: diffusers' ``ModelMixin.to`` warns about an empty
    ``_keep_in_fp32_modules`` list on every dtype cast; modules that do name fp32 submodules
    keep their own ``to``.
    """
    if getattr(module, "_keep_in_fp32_modules", None):
        module.to(device=device, dtype=dtype)
    else:
        torch.nn.Module.to(module, device=device, dtype=dtype)


def scale_factor_of(block_out_channels: Sequence[int]) -> int:
    """Pixels per latent element of a VAE with these encoder levels: ``2 ** (levels - 1)``."""
    return 2 ** (len(block_out_channels) - 1)


@dataclass(frozen=True)
class HashPromptEncoder:
    """Stand-in text encoder: each prompt maps to fixed random embeddings.

    The embeddings of a prompt are N(0, 1) draws from a generator seeded by a SHA-256 hash of
    ``namespace``, ``seed`` and the prompt text, so they are identical on every rank, in every
    process and on every platform, and differ between prompts.
    ``hidden`` is (B, seq_len, dim); ``pooled`` is (B, pooled_dim) when ``pooled_dim`` is set.
    """

    namespace: str
    seq_len: int
    dim: int
    pooled_dim: int | None = None
    seed: int = 0

    def _generator(self, prompt: str) -> torch.Generator:
        text = f"{self.namespace}\x00{self.seed}\x00{prompt}".encode()
        digest = hashlib.sha256(text).digest()
        return torch.Generator(device="cpu").manual_seed(int.from_bytes(digest[:8], "little"))

    def truncation(self, prompt: str) -> str | None:
        """Never: the whole text goes into the hash."""
        return None

    def encode(self, prompts: Sequence[str]) -> PromptEmbeddings:
        """Embed B prompts: hidden (B, seq_len, dim), pooled (B, pooled_dim) or None."""
        if isinstance(prompts, str):
            raise TypeError("encode() takes a sequence of prompts, not a single string")
        hidden = torch.empty(len(prompts), self.seq_len, self.dim)
        pooled = None if self.pooled_dim is None else torch.empty(len(prompts), self.pooled_dim)
        for i, prompt in enumerate(prompts):
            generator = self._generator(prompt)
            hidden[i] = torch.randn(self.seq_len, self.dim, generator=generator)
            if pooled is not None:
                pooled[i] = torch.randn(self.pooled_dim, generator=generator)
        return PromptEmbeddings(hidden=hidden, pooled=pooled)


@dataclass
class ModelBundle:
    """Everything a run needs from a model, on its device and in its dtype.

    ``denoiser``: the network the denoising loop steps (a diffusers ``UNet2DConditionModel``
    or ``PixArtTransformer2DModel``; its model family knows how to call it);
    ``scheduler_config`` is a diffusers scheduler config (pass it to ``Scheduler.from_config``);
    ``vae_scale_factor`` is the number of pixels per latent element along each axis.
    """

    denoiser: torch.nn.Module
    vae: AutoencoderKL
    encoder: PromptEncoder
    scheduler_config: dict[str, Any]
    vae_scale_factor: int
