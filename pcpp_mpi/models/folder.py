"""Local diffusers folders (``model_index.json`` + component folders), loaded offline.

Three kinds of folder (:func:`folder_network`): UNet pipelines (SD 1.x/2.x, SDXL), PixArt
pipelines (``transformer/`` holding a ``PixArtTransformer2DModel``, a T5 text encoder) and SD3
pipelines (an ``SD3Transformer2DModel``, two CLIP text encoders with projection and an
optional T5, :mod:`.sd3_text`).
:func:`check_model_folder` checks the layout without loading anything, so a bad path fails
before MPI-heavy work starts; :func:`load_folder` then loads the denoising network (UNet or
transformer), the VAE, the scheduler config and the text side (tokenizer + text encoder, plus
``tokenizer_2`` + ``text_encoder_2`` for SDXL) with ``local_files_only=True``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Literal

import torch
import transformers
from diffusers import (
    AutoencoderKL,
    PixArtTransformer2DModel,
    SD3Transformer2DModel,
    UNet2DConditionModel,
)

from pcpp_mpi.models.bundle import ModelBundle, PromptEmbeddings, place, scale_factor_of
from pcpp_mpi.models.configs import complete_config
from pcpp_mpi.models.errors import ModelError
from pcpp_mpi.models.pixart import ALPHA_TEXT_TOKENS, SIGMA_TEXT_TOKENS
from pcpp_mpi.models.sd3 import SD3_CLASS
from pcpp_mpi.models.sd3_text import SD3PromptEncoder
from pcpp_mpi.models.t5_text import T5PromptEncoder

FolderNetwork = Literal["unet", "pixart", "sd3"]
BASE_COMPONENTS: tuple[str, ...] = ("unet", "vae", "scheduler", "tokenizer", "text_encoder")
SDXL_COMPONENTS: tuple[str, ...] = ("tokenizer_2", "text_encoder_2")
PIXART_COMPONENTS: tuple[str, ...] = (
    "transformer",
    "vae",
    "scheduler",
    "tokenizer",
    "text_encoder",
)
PIXART_CLASS = "PixArtTransformer2DModel"
SD3_COMPONENTS: tuple[str, ...] = (*PIXART_COMPONENTS, *SDXL_COMPONENTS)
#: SD3's T5 side: optional (a folder without it gets zeros for the T5 tokens)
SD3_T5_COMPONENTS: tuple[str, ...] = ("tokenizer_3", "text_encoder_3")
TRANSFORMER_CLASS = {"pixart": PixArtTransformer2DModel, "sd3": SD3Transformer2DModel}
CONFIG_FILE = {
    "unet": "config.json",
    "transformer": "config.json",
    "vae": "config.json",
    "scheduler": "scheduler_config.json",
    "text_encoder": "config.json",
    "text_encoder_2": "config.json",
    "text_encoder_3": "config.json",
}
TOKENIZER_FILES: tuple[str, ...] = ("tokenizer.json", "vocab.json", "tokenizer_config.json")
#: a T5 tokenizer without ``tokenizer.json`` is a sentencepiece model, read only with sentencepiece
SENTENCEPIECE_FILE = "spiece.model"
WEIGHTED: tuple[str, ...] = (
    "unet",
    "transformer",
    "vae",
    "text_encoder",
    "text_encoder_2",
    "text_encoder_3",
)
EXPECTED_CLASS = {
    "unet": ("diffusers", "UNet2DConditionModel"),
    "transformer": ("diffusers", PIXART_CLASS),
    "vae": ("diffusers", "AutoencoderKL"),
}
DEFAULT_CLASS = {
    "tokenizer": "CLIPTokenizer",
    "tokenizer_2": "CLIPTokenizer",
    "text_encoder": "CLIPTextModel",
    "text_encoder_2": "CLIPTextModelWithProjection",
}
#: PixArt's text side: T5's encoder, and its fast tokenizer whatever model_index.json names
#: (the slow ``T5Tokenizer`` needs sentencepiece; the fast one reads ``tokenizer.json``)
PIXART_TEXT_CLASS = {"tokenizer": "T5TokenizerFast", "text_encoder": "T5EncoderModel"}
#: SD3's text side: CLIPs with projection (their pooled embeddings), T5 as PixArt's
SD3_TEXT_CLASS = {
    "text_encoder": "CLIPTextModelWithProjection",
    "text_encoder_2": "CLIPTextModelWithProjection",
    "tokenizer_3": "T5TokenizerFast",
    "text_encoder_3": "T5EncoderModel",
}


@dataclass(frozen=True)
class FolderLayout:
    """A checked model folder: its root, ``model_index.json`` and the components it needs."""

    root: Path
    model_index: dict[str, Any]
    components: tuple[str, ...]
    network: FolderNetwork = "unet"

    @property
    def is_sdxl(self) -> bool:
        return self.network == "unet" and "text_encoder_2" in self.components

    @property
    def text_tokens(self) -> int:
        """PixArt: the prompt tokens its pipeline reads (300 for Sigma, 120 for alpha)."""
        if str(self.model_index.get("_class_name", "")).startswith("PixArtSigma"):
            return SIGMA_TEXT_TOKENS
        return ALPHA_TEXT_TOKENS

    def class_name(self, component: str) -> str:
        """The transformers class of a tokenizer or text encoder (model_index.json or default)."""
        if self.network == "pixart":
            return PIXART_TEXT_CLASS[component]
        if self.network == "sd3" and component in SD3_TEXT_CLASS:
            return SD3_TEXT_CLASS[component]
        entry = self.model_index.get(component)
        if isinstance(entry, list) and len(entry) == 2 and entry[1]:
            return str(entry[1])
        return DEFAULT_CLASS[component]


def _read_json(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {file}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{file} does not hold a JSON object")
    return data


def read_component_config(path: str | Path, component: str) -> dict[str, Any]:
    """The raw JSON config of ``unet``, ``vae``, ``scheduler`` or a text encoder of a folder."""
    root = Path(path)
    if not root.is_dir():
        raise ModelError(f"model folder {root} does not exist or is not a directory")
    file = root / component / CONFIG_FILE[component]
    if not file.is_file():
        raise ModelError(f"model folder {root}: missing {component}/{CONFIG_FILE[component]}")
    return _read_json(file)


def folder_network(path: str | Path) -> FolderNetwork:
    """``"pixart"`` when the folder's ``transformer/config.json`` or ``model_index.json`` names
    a ``PixArtTransformer2DModel`` (or a PixArt pipeline), ``"sd3"`` for an
    ``SD3Transformer2DModel`` (or a StableDiffusion3 pipeline), else ``"unet"``. Reads only
    JSON."""
    root = Path(path)
    networks = {PIXART_CLASS: "pixart", SD3_CLASS: "sd3"}
    pipelines = {"PixArt": "pixart", "StableDiffusion3": "sd3"}
    config = root / "transformer" / CONFIG_FILE["transformer"]
    if config.is_file():
        name = _read_json(config).get("_class_name")
        if name in networks:
            return networks[name]  # type: ignore[return-value]
    index = root / "model_index.json"
    if index.is_file():
        model_index = _read_json(index)
        entry = model_index.get("transformer")
        if isinstance(entry, list) and len(entry) == 2 and entry[1] in networks:
            return networks[entry[1]]  # type: ignore[return-value]
        pipeline = str(model_index.get("_class_name", ""))
        for prefix, network in pipelines.items():
            if pipeline.startswith(prefix):
                return network  # type: ignore[return-value]
    return "unet"


def folder_transformer_config(path: str | Path) -> dict[str, Any]:
    """``<path>/transformer/config.json`` with the diffusers defaults filled in (of its
    class: PixArt's or SD3's); no weights."""
    network = folder_network(path)
    cls = TRANSFORMER_CLASS.get(network, PixArtTransformer2DModel)
    return complete_config(cls, read_component_config(path, "transformer"))


def folder_unet_config(path: str | Path) -> dict[str, Any]:
    """``<path>/unet/config.json`` with the diffusers defaults filled in; loads no weights."""
    return complete_config(UNet2DConditionModel, read_component_config(path, "unet"))


def folder_vae_config(path: str | Path) -> dict[str, Any]:
    """``<path>/vae/config.json`` with the diffusers defaults filled in; loads no weights."""
    return complete_config(AutoencoderKL, read_component_config(path, "vae"))


def folder_vae_scale_factor(path: str | Path) -> int:
    """Pixels per latent element of ``<path>/vae``, from its ``config.json``."""
    channels = read_component_config(path, "vae").get("block_out_channels")
    if not isinstance(channels, list) or not channels:
        raise ModelError(f"model folder {path}: vae/config.json has no block_out_channels")
    return scale_factor_of(channels)


def _has_weights(directory: Path) -> bool:
    return any(f.suffix in (".safetensors", ".bin") for f in directory.iterdir() if f.is_file())


def _needs_sdxl_text(root: Path, model_index: dict[str, Any]) -> bool:
    if str(model_index.get("_class_name", "")).startswith("StableDiffusionXL"):
        return True
    if any(model_index.get(name) not in (None, [None, None]) for name in SDXL_COMPONENTS):
        return True
    unet_config = root / "unet" / CONFIG_FILE["unet"]
    if unet_config.is_file():
        return _read_json(unet_config).get("addition_embed_type") == "text_time"
    return False


def _t5_tokenizer_problems(name: str, directory: Path) -> list[str]:
    """A T5 tokenizer is read from ``tokenizer.json`` (fast), or from its sentencepiece model
    when sentencepiece is installed."""
    if (directory / "tokenizer.json").is_file():
        return []
    if not (directory / SENTENCEPIECE_FILE).is_file():
        return [f"{name}/tokenizer.json (a T5 tokenizer; or {SENTENCEPIECE_FILE})"]
    if find_spec("sentencepiece") is None:
        return [
            f"{name}/tokenizer.json: the folder has only a sentencepiece model "
            f"({SENTENCEPIECE_FILE}), which needs the sentencepiece package: install it "
            "(pip install sentencepiece) or add the fast tokenizer's tokenizer.json"
        ]
    return []


def _component_problems(
    root: Path, model_index: dict[str, Any], name: str, network: FolderNetwork = "unet"
) -> list[str]:
    entry = model_index.get(name)
    if name in model_index and (entry is None or entry == [None, None]):
        return [f"{name} (set to null in model_index.json)"]
    expected = EXPECTED_CLASS.get(name)
    if name == "transformer" and network == "sd3":
        expected = ("diffusers", SD3_CLASS)
    if expected is not None and isinstance(entry, list) and tuple(entry) != expected:
        want = expected[1]
        return [f"{name} of class {want} (model_index.json names {entry[0]}.{entry[1]})"]
    if isinstance(entry, list) and entry[0] not in ("diffusers", "transformers"):
        return [f"{name} from diffusers or transformers (model_index.json names {entry[0]})"]
    directory = root / name
    if not directory.is_dir():
        return [f"{name}/ (directory)"]
    if name in CONFIG_FILE and not (directory / CONFIG_FILE[name]).is_file():
        return [f"{name}/{CONFIG_FILE[name]}"]
    if name.startswith("tokenizer") and (network == "pixart" or name == "tokenizer_3"):
        return _t5_tokenizer_problems(name, directory)
    if name.startswith("tokenizer") and not any((directory / f).is_file() for f in TOKENIZER_FILES):
        return [f"{name}/ tokenizer files (one of {', '.join(TOKENIZER_FILES)})"]
    if name in WEIGHTED and not _has_weights(directory):
        return [f"{name}/ weights (*.safetensors or *.bin)"]
    return []


def inspect_model_folder(path: str | Path) -> FolderLayout:
    """Check a diffusers folder without loading weights; raise :class:`ModelError` listing
    everything that is missing."""
    root = Path(path)
    if not root.is_dir():
        raise ModelError(f"model folder {root} does not exist or is not a directory")
    index_file = root / "model_index.json"
    if not index_file.is_file():
        raise ModelError(f"model folder {root}: missing model_index.json (not a diffusers folder?)")
    model_index = _read_json(index_file)
    network = folder_network(root)
    components = BASE_COMPONENTS
    if network == "pixart":
        components = PIXART_COMPONENTS
    elif network == "sd3":
        components = SD3_COMPONENTS
        if any(model_index.get(name) not in (None, [None, None]) for name in SD3_T5_COMPONENTS):
            components = (*components, *SD3_T5_COMPONENTS)
    elif _needs_sdxl_text(root, model_index):
        components = (*BASE_COMPONENTS, *SDXL_COMPONENTS)
    problems = [
        p for name in components for p in _component_problems(root, model_index, name, network)
    ]
    if problems:
        raise ModelError(f"model folder {root}: missing {'; '.join(problems)}")
    return FolderLayout(root=root, model_index=model_index, components=components, network=network)


def check_model_folder(path: str) -> None:
    """Raise :class:`ModelError` naming the folder and what is missing, unless ``path`` is a
    loadable diffusers folder (model_index.json, unet or a PixArt transformer, vae, scheduler,
    tokenizer(s), text encoder(s)). Reads only JSON files."""
    inspect_model_folder(path)


def _variant(directory: Path) -> str | None:
    """``"fp16"`` when a folder holds only ``*.fp16.*`` weight files, else ``None``."""
    names = [f.name for f in directory.iterdir() if f.suffix in (".safetensors", ".bin")]
    if names and all(".fp16." in name for name in names):
        return "fp16"
    return None


def _transformers_class(layout: FolderLayout, component: str) -> Any:
    name = layout.class_name(component)
    cls = getattr(transformers, name, None)
    if cls is None:
        raise ModelError(
            f"model folder {layout.root}: {component} class {name} is not in transformers"
        )
    return cls


@dataclass
class FolderPromptEncoder:
    """The folder's own text side, following diffusers' ``encode_prompt`` (no clip skip).

    SD 1.x/2.x: hidden = last hidden state of ``text_encoder``, (B, 77, dim), pooled None.
    SDXL: hidden = penultimate hidden states of both encoders concatenated, (B, 77, 768 + 1280);
    pooled = ``text_encoder_2``'s projected embedding, (B, 1280).
    """

    tokenizers: tuple[Any, ...]
    text_encoders: tuple[torch.nn.Module, ...]
    device: torch.device
    sdxl: bool

    def _token_ids(self, tokenizer: Any, encoder: torch.nn.Module, prompts: list[str]) -> Any:
        max_length = min(tokenizer.model_max_length, encoder.config.max_position_embeddings)
        return tokenizer(
            prompts,
            padding="max_length",
            max_length=max_length,
            truncation=True,
            return_tensors="pt",
        )

    def truncation(self, prompt: str) -> str | None:
        """Whether a tokenizer cuts ``prompt`` to its encoder's context (77 tokens for CLIP)."""
        for tokenizer, encoder in zip(self.tokenizers, self.text_encoders, strict=True):
            max_length = min(tokenizer.model_max_length, encoder.config.max_position_embeddings)
            length = len(tokenizer(prompt, truncation=False, verbose=False).input_ids)
            if length > max_length:
                return f"{length} tokens, the text encoder reads the first {max_length}"
        return None

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> PromptEmbeddings:
        """Embed B prompts; float32 CPU tensors (shapes in the class docstring)."""
        if isinstance(prompts, str):
            raise TypeError("encode() takes a sequence of prompts, not a single string")
        prompts = list(prompts)
        if not self.sdxl:
            tokenizer, encoder = self.tokenizers[0], self.text_encoders[0]
            tokens = self._token_ids(tokenizer, encoder, prompts)
            mask = None
            if getattr(encoder.config, "use_attention_mask", False):
                mask = tokens.attention_mask.to(self.device)
            hidden = encoder(tokens.input_ids.to(self.device), attention_mask=mask)[0]
            return PromptEmbeddings(hidden=hidden.float().cpu(), pooled=None)
        hiddens, pooled = [], None
        for tokenizer, encoder in zip(self.tokenizers, self.text_encoders, strict=True):
            tokens = self._token_ids(tokenizer, encoder, prompts)
            out = encoder(tokens.input_ids.to(self.device), output_hidden_states=True)
            if pooled is None and out[0].ndim == 2:
                pooled = out[0]
            hiddens.append(out.hidden_states[-2].float())
        if pooled is None:
            raise ModelError("SDXL text side: no text encoder returned a pooled embedding")
        hidden = torch.cat(hiddens, dim=-1)
        return PromptEmbeddings(hidden=hidden.cpu(), pooled=pooled.float().cpu())


def load_folder(path: str, dtype: torch.dtype, device: torch.device) -> ModelBundle:
    """Load a checked diffusers folder offline, in ``dtype`` on ``device``, in eval mode."""
    layout = inspect_model_folder(path)
    root = layout.root

    def load(component: str, loader: Any, **kwargs: Any) -> Any:
        try:
            return loader(root / component, local_files_only=True, **kwargs)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise ModelError(f"model folder {root}: cannot load {component}: {exc}") from exc

    network_name, network_class = (
        ("transformer", TRANSFORMER_CLASS[layout.network])
        if layout.network in TRANSFORMER_CLASS
        else ("unet", UNet2DConditionModel)
    )
    network = load(
        network_name,
        network_class.from_pretrained,
        torch_dtype=dtype,
        variant=_variant(root / network_name),
    )
    vae = load(
        "vae", AutoencoderKL.from_pretrained, torch_dtype=dtype, variant=_variant(root / "vae")
    )
    suffixes = tuple(
        "" if name == "text_encoder" else name.removeprefix("text_encoder")
        for name in layout.components
        if name.startswith("text_encoder")
    )
    encoders = tuple(
        load(
            f"text_encoder{s}",
            _transformers_class(layout, f"text_encoder{s}").from_pretrained,
            dtype=dtype,
        )
        for s in suffixes
    )
    tokenizers = tuple(
        load(f"tokenizer{s}", _transformers_class(layout, f"tokenizer{s}").from_pretrained)
        for s in suffixes
    )
    for module in (network, vae, *encoders):
        module.requires_grad_(False).eval()
        place(module, device, dtype)
    encoder: Any
    if layout.network == "pixart":
        encoder = T5PromptEncoder(tokenizers[0], encoders[0], device, layout.text_tokens)
    elif layout.network == "sd3":
        pairs = tuple(zip(tokenizers, encoders, strict=True))
        encoder = SD3PromptEncoder(
            clip=pairs[:2],
            t5=pairs[2] if len(pairs) > 2 else None,
            device=device,
            joint_dim=int(network.config.joint_attention_dim),
        )
    else:
        encoder = FolderPromptEncoder(
            tokenizers=tokenizers, text_encoders=encoders, device=device, sdxl=layout.is_sdxl
        )
    return ModelBundle(
        denoiser=network,
        vae=vae,
        encoder=encoder,
        scheduler_config=read_component_config(root, "scheduler"),
        vae_scale_factor=scale_factor_of(vae.config.block_out_channels),
    )
