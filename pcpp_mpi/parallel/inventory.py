"""Trace the spatial layers of any model that patch parallelism must handle, and where they run.

The inventory is found by tracing one forward pass on the ``meta`` device (no weights, no
compute): every Conv2d, GroupNorm and self-attention layer records the *global* shape of its
input, from which its level follows. A model family supplies the call (its example inputs) and
what its configuration says (levels, latent channels, the convolutions reading the step's
input); the runtime plan and ``pcpp-mpi plan`` both read the result, so the bytes predicted and
the bytes sent come from one description of the model.
"""

from __future__ import annotations

from collections.abc import Callable

from diffusers.models.attention_processor import Attention
from torch import nn

from pcpp_mpi.geometry import level_unit

# the inventory as plain data lives in the planning layer; re-exported for the families
from pcpp_mpi.plan.inventory import AttnSpec as AttnSpec
from pcpp_mpi.plan.inventory import ConvSpec as ConvSpec
from pcpp_mpi.plan.inventory import LayerInventory as LayerInventory
from pcpp_mpi.plan.inventory import NormSpec as NormSpec


class UnsupportedModelError(ValueError):
    """The model has a layer that patch parallelism cannot split exactly."""


def _level_of(height: int, latent_height: int) -> int:
    level = (latent_height // height).bit_length() - 1
    if latent_height != height << level:
        raise UnsupportedModelError(f"activation height {height} is not latent/2**l")
    return level


def _attn_level(tokens: int, latent_height: int, latent_width: int) -> int:
    for level in range(16):
        if (latent_height >> level) * (latent_width >> level) == tokens:
            return level
    raise UnsupportedModelError(f"self-attention over {tokens} tokens matches no level")


def _patchifies(conv: nn.Conv2d) -> bool:
    """A convolution cutting its input into non-overlapping patches along the height (kernel
    = stride, no padding, no dilation, e.g. a transformer's patch embedding): on a band that
    starts on a patch boundary it needs no row of another band."""
    kernel, stride = conv.kernel_size[0], conv.stride[0]
    return (
        kernel > 1
        and kernel == stride
        and conv.padding[0] == 0
        and conv.dilation[0] == 1
        and not isinstance(conv.padding, str)
    )


def is_self_attention(module: nn.Module) -> bool:
    return isinstance(module, Attention) and not module.is_cross_attention


def trace_layers(
    model: nn.Module,
    run: Callable[[nn.Module], object],
    latent_height: int,
    latent_width: int,
    *,
    levels: int,
    latent_channels: int,
    fresh_convs: frozenset[str] = frozenset(),
) -> LayerInventory:
    """Trace ``model``'s spatial layers while ``run(model)`` calls it once on inputs of the
    given global latent size (a model on the ``meta`` device: no weights, no compute).

    Every Conv2d whose kernel spans more than one row, every GroupNorm and every
    self-attention layer records the shape of its first call's input, from which its level
    follows (``latent_height / 2**level`` rows). A patchify convolution (kernel = stride, no
    padding) needs nothing once bands are whole patches (checked against the band unit
    ``2**(levels - 1)``) and is left out. ``fresh_convs``: the convolutions that read the
    step's own input (their halo is exchanged fresh in every step). ``levels`` and
    ``latent_channels`` describe the model (its family reads them from its configuration).
    """
    input_shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str):
        def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            first = args[0] if args else kwargs["hidden_states"]
            input_shapes.setdefault(name, tuple(first.shape))

        return hook

    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d | nn.GroupNorm) or is_self_attention(module):
            handles.append(module.register_forward_pre_hook(record(name), with_kwargs=True))
    try:
        run(model)
    finally:
        for handle in handles:
            handle.remove()

    convs: list[ConvSpec] = []
    norms: list[NormSpec] = []
    attns: list[AttnSpec] = []
    modules = dict(model.named_modules())
    for name, shape in input_shapes.items():
        module = modules[name]
        if isinstance(module, nn.Conv2d):
            kernel_h, _ = module.kernel_size
            if kernel_h == 1 and module.stride[0] == 1 and module.padding[0] == 0:
                continue
            if _patchifies(module):
                level = _level_of(shape[2], latent_height)
                if (level_unit(levels) >> level) % kernel_h:
                    raise UnsupportedModelError(
                        f"{name}: a patchify convolution of {kernel_h} rows at level {level} "
                        f"needs bands of whole patches; the band unit is {level_unit(levels)} "
                        "latent rows"
                    )
                continue  # reads its band's own rows only: nothing to exchange
            if module.padding_mode != "zeros" or isinstance(module.padding, str):
                raise UnsupportedModelError(f"{name}: only zero-padded convolutions are supported")
            convs.append(
                ConvSpec(
                    name=name,
                    level=_level_of(shape[2], latent_height),
                    in_channels=module.in_channels,
                    kernel=kernel_h,
                    stride=module.stride[0],
                    padding=module.padding[0],
                    dilation=module.dilation[0],
                    always_fresh=name in fresh_convs,
                )
            )
        elif isinstance(module, nn.GroupNorm):
            if len(shape) != 4:
                raise UnsupportedModelError(f"{name}: GroupNorm over non-spatial input {shape}")
            norms.append(
                NormSpec(
                    name=name,
                    level=_level_of(shape[2], latent_height),
                    channels=module.num_channels,
                    groups=module.num_groups,
                )
            )
        else:
            if len(shape) != 3:
                raise UnsupportedModelError(f"{name}: self-attention over {len(shape)}-D input")
            attns.append(
                AttnSpec(
                    name=name,
                    level=_attn_level(shape[1], latent_height, latent_width),
                    inner_dim=module.to_k.out_features,
                    heads=module.heads,
                )
            )
    for spec in convs:
        if spec.stride > 1 and spec.padding == 0:
            raise UnsupportedModelError(
                f"{spec.name}: a strided convolution without padding (downsample_padding=0) "
                "pads asymmetrically inside the block and cannot be split into bands"
            )
    return LayerInventory(
        levels=levels,
        latent_height=latent_height,
        latent_width=latent_width,
        latent_channels=latent_channels,
        convs=tuple(convs),
        norms=tuple(norms),
        attns=tuple(attns),
    )
