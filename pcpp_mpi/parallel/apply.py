"""Make a model patch-parallel from its layer inventory, and undo it again (any family).

The inventory (:mod:`pcpp_mpi.plan.inventory`, traced by the model's family) names every layer
to replace: convolutions and GroupNorms are replaced by small wrapper modules holding the
original ones; self-attention layers (diffusers ``Attention`` modules) get a processor through
``Attention.set_processor`` (a joint one for SD3's joint image + text attention). Nothing is
monkeypatched, and :meth:`ParallelHandle.remove` restores the original model. A family's
``parallelize`` calls :func:`parallelize` for the layers it shares with every family and adds
its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from diffusers.models.attention_processor import Attention
from torch import nn

from pcpp_mpi.geometry import Band, conv_halo
from pcpp_mpi.parallel.band_attention import BandSelfAttnProcessor, KVRows
from pcpp_mpi.parallel.band_comm import BandComm
from pcpp_mpi.parallel.band_norm import BandGroupNorm, NormKernels
from pcpp_mpi.parallel.clock import StepClock
from pcpp_mpi.parallel.exchange_ops import ExchangeOps
from pcpp_mpi.parallel.halo_conv import HaloConv2d
from pcpp_mpi.parallel.joint_attention import JointBandAttnProcessor, is_joint_attention
from pcpp_mpi.plan.inventory import LayerInventory
from pcpp_mpi.plan.schedule import attention_pattern, communicates, runs_split
from pcpp_mpi.plan.topology import neighbours, shared_rows


@dataclass
class ParallelHandle:
    """What :func:`parallelize` changed, so it can be undone; also the exchanges it made."""

    replaced: list[tuple[nn.Module, str, nn.Module]] = field(default_factory=list)
    processors: list[tuple[Attention, object]] = field(default_factory=list)
    exchanges: list[object] = field(default_factory=list)
    ops: ExchangeOps | None = None  # the exchanges' operators, for torch.compile

    def reset(self) -> None:
        """Prepare every exchange for a new image (step numbers restart at 0)."""
        for exchange in self.exchanges:
            exchange.reset()  # type: ignore[attr-defined]

    def drain(self) -> None:
        """Complete the exchanges still in flight (every rank stopped at the same step)."""
        for exchange in self.exchanges:
            exchange.drain()  # type: ignore[attr-defined]

    def remove(self) -> None:
        for parent, child, original in reversed(self.replaced):
            setattr(parent, child, original)
        for attn, processor in reversed(self.processors):
            attn.set_processor(processor)  # type: ignore[arg-type]
        self.replaced.clear()
        self.processors.clear()
        if self.ops is not None:
            # compiled code calls these operators: drop it with them (a later run's compiled
            # code must not be looked up among graphs of operators that no longer exist)
            torch.compiler.reset()
            self.ops.close()
            self.ops = None


def _split(name: str) -> tuple[str, str]:
    parent, _, child = name.rpartition(".")
    return parent, child


@dataclass(frozen=True)
class BandOptions:
    """How a rank's band-parallel layers run (from the job's ``parallel`` and ``runtime``).

    ``mode`` and ``ratio``: ``parallel.mode`` (effective for the band count) and
    ``parallel.ratio``. ``batch`` is the model batch on this rank (2 with in-rank CFG, 1 with
    ``cfg_parallel``).
    ``latent_halo_on_host``: the halo of a convolution reading the step's input (``always_fresh``,
    latent rows exchanged fresh at the start of every step) travels through pinned host buffers
    even when MPI takes device buffers, so this small message does not wait behind
    device-to-device transfers.
    ``norm_kernels``: how every GroupNorm runs; with ``triton`` a one-band run (``single``)
    gets the kernels too, with its own statistics (nothing else changes there).
    ``kv_frames``: when MPI takes buffers on the compute device, the K/V exchanges of each
    attention layer share two :class:`~pcpp_mpi.comm.frames.TokenFrames`, which displaced
    steps read and write in place. ``stats_per_step``: displaced steps exchange the statistics
    of every GroupNorm in one all-reduce (:mod:`~pcpp_mpi.comm.step_stats`) instead of one per
    norm.
    ``traced``: the layers take their ``torch.compile`` path, each exchange behind a custom
    operator of one :class:`~pcpp_mpi.parallel.exchange_ops.ExchangeOps` (``handle.ops``); a
    one-band run then installs nothing (the plain model compiles as it is).
    """

    mode: str
    ratio: float
    batch: int
    latent_halo_on_host: bool = True
    norm_kernels: NormKernels = "torch"
    kv_frames: bool = True
    stats_per_step: bool = True
    traced: bool = False


def parallelize(
    model: nn.Module,
    inventory: LayerInventory,
    comm: BandComm,
    bands: Sequence[Band],
    clock: StepClock,
    options: BandOptions,
) -> ParallelHandle:
    """Install band-parallel layers in ``model`` for this rank's band
    (``comm.topology.band_index``): every convolution, GroupNorm and self-attention layer of
    ``inventory`` (module names in ``model``), as :class:`BandOptions` says."""
    mode, ratio, batch = options.mode, options.ratio, options.batch
    norm_kernels, traced = options.norm_kernels, options.traced
    handle = ParallelHandle()
    modules = dict(model.named_modules())

    def replace(name: str, wrapper: nn.Module) -> None:
        parent_name, child = _split(name)
        parent = modules[parent_name] if parent_name else model
        handle.replaced.append((parent, child, getattr(parent, child)))
        setattr(parent, child, wrapper)

    if not runs_split(mode, len(bands)):
        # the one-GPU baseline gets the same GroupNorm kernels (compiled: inductor's)
        if norm_kernels != "torch" and not traced:
            for spec in inventory.norms:
                norm = modules[spec.name]
                assert isinstance(norm, nn.GroupNorm)
                replace(spec.name, BandGroupNorm(norm, None, clock, norm_kernels))
        return handle
    communicate = communicates(mode)
    ops = handle.ops = ExchangeOps() if traced else None
    pattern = attention_pattern(mode)
    index = comm.topology.band_index
    band = bands[index]
    up, down = neighbours(bands, index)
    parameter = next(model.parameters())
    wire = comm.wire_spec(parameter.device, parameter.dtype)
    host_wire = comm.host_wire_spec(parameter.device, parameter.dtype)

    for spec in inventory.convs:
        halo = conv_halo(spec.kernel, spec.stride, spec.padding, spec.dilation)
        exchange = None
        if communicate and (halo.above or halo.below):
            row = (batch, spec.in_channels)
            width = (inventory.width_at(spec.level),)

            def shape(rows: int, neighbour: Band | None, row=row, width=width):
                return None if neighbour is None or rows == 0 else (*row, rows, *width)

            exchange = comm.neighbour_exchange(
                spec.name,
                "halo",
                send_shapes=(shape(halo.below, up), shape(halo.above, down)),
                recv_shapes=(shape(halo.above, up), shape(halo.below, down)),
                wire=host_wire if spec.always_fresh and options.latent_halo_on_host else wire,
            )
            handle.exchanges.append(exchange)
        conv = modules[spec.name]
        assert isinstance(conv, nn.Conv2d)
        replace(
            spec.name,
            HaloConv2d(conv, halo, exchange, clock, spec.always_fresh, ops=ops),
        )

    step_stats = None
    if communicate and options.stats_per_step and inventory.norms:
        step_stats = comm.step_stats_allreduce(
            "group_norms", "norm", shapes=[(3, batch, s.groups) for s in inventory.norms], wire=wire
        )
        handle.exchanges.append(step_stats)
    for position, spec in enumerate(inventory.norms):
        stats = None
        if communicate:
            stats = comm.stats_allreduce(
                spec.name, "norm", shape=(3, batch, spec.groups), wire=wire
            )
            handle.exchanges.append(stats)
        norm = modules[spec.name]
        assert isinstance(norm, nn.GroupNorm)
        replace(
            spec.name,
            BandGroupNorm(norm, stats, clock, norm_kernels, step_stats, position, ops),
        )

    for spec in inventory.attns:
        attn = modules[spec.name]
        assert isinstance(attn, Attention)
        width = inventory.width_at(spec.level)
        channels = 2 * spec.inner_dim
        blocks = rows = kv_rows = None
        if communicate:
            band_tokens = [b.rows_at_level(spec.level) * width for b in bands]
            frames = None
            if options.kv_frames and not wire.staged:
                frames = comm.token_frames(
                    wire, batch=batch, channels=channels, band_tokens=band_tokens
                )
            blocks = comm.all_bands_exchange(
                spec.name,
                "kv",
                shapes=[(batch, tokens, channels) for tokens in band_tokens],
                wire=wire,
                frames=frames,
            )
            handle.exchanges.append(blocks)
            if pattern == "pcpp":
                shared = shared_rows(ratio, bands, index, spec.level)
                kv_rows = KVRows(
                    width=width,
                    own_rows=band.rows_at_level(spec.level),
                    own=shared.own,
                    from_up=shared.from_up,
                    from_down=shared.from_down,
                )

                def kv_shape(n_rows: int, neighbour: Band | None, width=width, channels=channels):
                    if neighbour is None or n_rows == 0:
                        return None
                    return (batch, n_rows * width, channels)

                rows = comm.neighbour_exchange(
                    spec.name + ".pcpp",
                    "kv",
                    send_shapes=(kv_shape(kv_rows.own, up), kv_shape(kv_rows.own, down)),
                    recv_shapes=(kv_shape(kv_rows.from_up, up), kv_shape(kv_rows.from_down, down)),
                    wire=wire,
                    frames=frames,
                    frame_band=index,
                )
                handle.exchanges.append(rows)
        handle.processors.append((attn, attn.processor))
        # a joint (image + text) attention exchanges the same image K/V; its text stays local
        processor = JointBandAttnProcessor if is_joint_attention(attn) else BandSelfAttnProcessor
        attn.set_processor(
            processor(
                clock=clock,
                band_index=index,
                pattern=pattern,
                blocks=blocks,
                rows=rows,
                kv_rows=kv_rows,
                ops=ops,
                attn=attn,
            )
        )
    return handle


def dtype_itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()
