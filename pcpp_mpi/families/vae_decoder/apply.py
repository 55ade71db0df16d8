"""Make a diffusers VAE decoder band-parallel from its inventory, and undo it again.

The same layers as the UNet's: halo convolutions for every convolution with halo rows, at its
scale (the convolution after an upsampling gets its halo at the upsampled resolution; "same"
convolutions recompute only their edge rows, :mod:`~.edge_conv`), band GroupNorms
(:class:`~pcpp_mpi.parallel.band_norm.BandGroupNorm`, the attention's own included), and a
band attention processor with every band's keys and values. The clock is fixed at one
``sync`` step: every exchange is fresh and waited at once, so the decode is exact whatever the
denoising mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from diffusers import AutoencoderKL
from diffusers.models.attention_processor import Attention
from torch import nn

from pcpp_mpi.families.vae_decoder.attention import BandDecoderAttnProcessor
from pcpp_mpi.families.vae_decoder.edge_conv import EdgeHaloConv2d, fits_edge_conv
from pcpp_mpi.geometry import Band, conv_halo
from pcpp_mpi.parallel.apply import ParallelHandle
from pcpp_mpi.parallel.band_norm import BandGroupNorm, NormKernels
from pcpp_mpi.parallel.clock import StepClock
from pcpp_mpi.parallel.halo_conv import HaloConv2d
from pcpp_mpi.plan.decode import DECODE_KIND, DecoderInventory
from pcpp_mpi.plan.topology import neighbours

if TYPE_CHECKING:
    from pcpp_mpi.comm.wire import WireSpec


class DecoderComm(Protocol):
    """What the decoder's layers ask of the group of decoding ranks (band order), e.g.
    :class:`~pcpp_mpi.comm.band_group.BandGroup`: exchanges named after their layer."""

    rank: int
    size: int

    def restart_tags(self) -> None: ...

    def neighbour_exchange(
        self,
        name: str,
        kind: str,
        *,
        send_shapes: tuple[Sequence[int] | None, Sequence[int] | None],
        recv_shapes: tuple[Sequence[int] | None, Sequence[int] | None],
        wire: WireSpec,
    ) -> Any: ...

    def all_bands_exchange(
        self, name: str, kind: str, *, shapes: Sequence[Sequence[int]], wire: WireSpec
    ) -> Any: ...

    def stats_allreduce(
        self, name: str, kind: str, *, shape: Sequence[int], wire: WireSpec
    ) -> Any: ...


def decode_clock(step: int) -> StepClock:
    """A clock standing at one ``sync`` step numbered ``step`` (the step the decode's
    exchanges are counted and traced in)."""
    return StepClock(mode="sync", steps=step + 1, warmup_steps=0, step=step, kind="sync",
                     phase="fresh")  # fmt: skip


def parallelize_decoder(
    vae: AutoencoderKL,
    inventory: DecoderInventory,
    group: DecoderComm,
    bands: Sequence[Band],
    clock: StepClock,
    *,
    wire: WireSpec,
    norm_kernels: NormKernels = "torch",
) -> ParallelHandle:
    """Install band-parallel layers on ``vae`` (``post_quant_conv`` and ``decoder``) for the
    band of ``group.rank`` among ``bands`` (latent rows, one per rank of ``group``).

    ``wire``: where the exchange buffers live (device buffers for a CUDA-aware MPI, pinned
    host memory otherwise), in the decoder's dtype. Undo with ``handle.remove()``.
    """
    if len(bands) != group.size:
        raise ValueError(f"{len(bands)} decode bands for a group of {group.size} ranks")
    handle = ParallelHandle()
    modules = dict(vae.named_modules())
    index = group.rank
    up, down = neighbours(bands, index)

    def replace(name: str, wrapper: nn.Module) -> None:
        parent_name, _, child = name.rpartition(".")
        parent = modules[parent_name] if parent_name else vae
        handle.replaced.append((parent, child, getattr(parent, child)))
        setattr(parent, child, wrapper)

    for spec in inventory.convs:
        halo = conv_halo(spec.kernel, spec.stride, spec.padding, spec.dilation)
        row = (1, spec.in_channels)
        width = (inventory.width_at(spec.scale),)

        def shape(rows: int, neighbour: Band | None, row=row, width=width):
            return None if neighbour is None or rows == 0 else (*row, rows, *width)

        exchange = group.neighbour_exchange(
            spec.name,
            DECODE_KIND,
            send_shapes=(shape(halo.below, up), shape(halo.above, down)),
            recv_shapes=(shape(halo.above, up), shape(halo.below, down)),
            wire=wire,
        )
        handle.exchanges.append(exchange)
        conv = modules[spec.name]
        assert isinstance(conv, nn.Conv2d)
        if fits_edge_conv(conv, halo):
            replace(spec.name, EdgeHaloConv2d(conv, halo, exchange, clock))
        else:
            replace(spec.name, HaloConv2d(conv, halo, exchange, clock))

    for spec in inventory.norms:
        stats = group.stats_allreduce(spec.name, DECODE_KIND, shape=(3, 1, spec.groups), wire=wire)
        handle.exchanges.append(stats)
        norm = modules[spec.name]
        assert isinstance(norm, nn.GroupNorm)
        replace(spec.name, BandGroupNorm(norm, stats, clock, norm_kernels))

    for spec in inventory.attns:
        attn = modules[spec.name]
        assert isinstance(attn, Attention)
        width = inventory.width_at(spec.scale)
        blocks = group.all_bands_exchange(
            spec.name,
            DECODE_KIND,
            shapes=[(1, b.rows * spec.scale * width, 2 * spec.inner_dim) for b in bands],
            wire=wire,
        )
        handle.exchanges.append(blocks)
        handle.processors.append((attn, attn.processor))
        attn.set_processor(BandDecoderAttnProcessor(clock, blocks))
    return handle
