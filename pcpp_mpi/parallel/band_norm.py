"""GroupNorm over a band with statistics shared by all bands."""

from __future__ import annotations

import importlib
import logging
from types import ModuleType
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from pcpp_mpi.parallel.clock import StepClock
from pcpp_mpi.parallel.exchange_ops import ExchangeOps

log = logging.getLogger(__name__)


class StatsExchange(Protocol):
    def post(self, step: int, local: torch.Tensor) -> None: ...

    def wait(self, step: int) -> torch.Tensor: ...

    def wait_others(self, step: int) -> torch.Tensor: ...


class StepStats(Protocol):
    """All norms' statistics of a displaced step in one exchange
    (:class:`pcpp_mpi.comm.step_stats.StepStatsAllreduce`)."""

    def others(self, step: int, index: int) -> torch.Tensor: ...

    def local(self, step: int, index: int) -> torch.Tensor: ...

    def contributed(self, step: int) -> None: ...


def local_group_stats(x: torch.Tensor, groups: int) -> torch.Tensor:
    """``(3, B, G)`` float64 on ``x``'s device: per-group sum, sum of squares and element count
    of a local band ``x`` of shape ``(B, C, h, W)``.

    On the CPU the sums accumulate in float64. On a GPU a half-precision band is reduced
    straight into float32 (a reduction to float64 would first copy the whole band to float64:
    two full copies per norm, a large share of a band step, see docs/BENCHMARKS.md), without a
    squared copy of ``x`` (a half-precision square would also overflow above 256); squares of
    float16 values are exact in float32, so only the summation rounds, like PyTorch's own
    GroupNorm statistics. The per-group results are then widened to float64.
    """
    batch = x.shape[0]
    grouped = x.reshape(batch, groups, -1)
    stats = torch.empty((3, batch, groups), dtype=torch.float64, device=x.device)
    if x.device.type == "cpu":
        torch.sum(grouped, dim=-1, dtype=torch.float64, out=stats[0])
        torch.sum(grouped.square(), dim=-1, dtype=torch.float64, out=stats[1])
    else:
        accumulate = torch.float64 if x.dtype == torch.float64 else torch.float32
        sums = torch.empty((2, batch, groups), dtype=accumulate, device=x.device)
        torch.sum(grouped, dim=-1, dtype=accumulate, out=sums[0])
        torch.linalg.vector_norm(grouped, dim=-1, dtype=accumulate, out=sums[1])
        stats[:2].copy_(sums)
        stats[1].square_()
    stats[2].fill_(grouped.shape[-1])
    return stats


def traced_group_stats(x: torch.Tensor, groups: int) -> torch.Tensor:
    """As :func:`local_group_stats`, written for ``torch.compile`` (no ``out=`` arguments;
    inductor fuses the widening into the reductions): ``(3, B, G)`` float64 of a local band
    ``x`` ``(B, C, h, W)``, summed in float64 on the CPU and in float32 on a GPU."""
    batch = x.shape[0]
    accumulate = torch.float64 if x.device.type == "cpu" else torch.float32
    grouped = x.reshape(batch, groups, -1).to(accumulate)
    sums = grouped.sum(dim=-1)
    squares = (grouped * grouped).sum(dim=-1)
    counts = torch.full_like(sums, grouped.shape[-1])
    return torch.stack([sums, squares, counts]).to(torch.float64)


def traced_normalize(x: torch.Tensor, stats: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """The local band ``x`` ``(B, C, h, W)`` normalised with the group sums ``stats``
    ``(3, B, G)`` float64 and ``norm``'s affine map, as plain operations for inductor to fuse
    with what surrounds them (half-precision bands are computed in float32)."""
    batch, channels = x.shape[:2]
    groups = norm.num_groups
    mean = stats[0] / stats[2]
    variance = (stats[1] / stats[2] - mean * mean).clamp_min(0.0)
    dtype = _parameter_dtype(x.dtype)
    scale = torch.rsqrt(variance + norm.eps).to(dtype).unsqueeze(-1)  # (B, G, 1)
    shift = (-mean).to(dtype).unsqueeze(-1) * scale
    grouped = x.reshape(batch, groups, -1).to(dtype)
    out = (grouped * scale + shift).view(x.shape)
    if norm.affine:
        affine_shape = (1, channels) + (1,) * (x.ndim - 2)
        out = out * norm.weight.to(dtype).view(affine_shape) + norm.bias.to(dtype).view(
            affine_shape
        )
    return out.to(x.dtype)


NormKernels = Literal["torch", "triton"]


def resolve_norm_kernels(setting: str, device: torch.device) -> NormKernels:
    """The GroupNorm implementation for ``runtime.norm_kernels``: ``auto`` takes the Triton
    kernels (:mod:`pcpp_mpi.parallel.norm_kernels`) on a GPU when they compile, run and agree
    with PyTorch on a small band there, PyTorch operations otherwise; ``triton`` raises if they
    cannot be used."""
    if setting == "torch" or (setting == "auto" and device.type != "cuda"):
        return "torch"
    if setting not in ("auto", "triton"):
        raise ValueError(f"runtime.norm_kernels: unknown setting {setting!r}")
    try:
        _kernel_module().self_check(device)
    except Exception as error:  # no Triton, no C compiler for its launcher, an unknown GPU...
        if setting == "triton":
            raise RuntimeError(
                f"runtime.norm_kernels: 'triton' requested but its kernels cannot run on "
                f"{device}: {type(error).__name__}: {error}"
            ) from error
        log.warning("GroupNorm Triton kernels unusable on %s (%s): using PyTorch's", device, error)
        return "torch"
    return "triton"


def _kernel_module() -> ModuleType:
    return importlib.import_module("pcpp_mpi.parallel.norm_kernels")


class BandGroupNorm(nn.Module):
    """Wraps ``nn.GroupNorm``; input and output are local bands ``(B, C, h, W)``.

    Statistics: ``local`` uses the band's own; ``sync`` all-reduces fresh sums; ``displaced``
    takes the previous step's global sums and replaces this band's stale share with its fresh
    one (DistriFusion's corrected stale GroupNorm, exact for unequal bands because it works on
    sums and counts rather than means).

    ``kernels``: ``torch`` computes the statistics and applies them with PyTorch operations;
    ``triton`` with three Triton kernels (fewer launches: see :mod:`~.norm_kernels`), for
    contiguous half or single precision bands (others take the PyTorch path), also for the
    band's own statistics (``local`` steps, ``naive``, ``single``), where PyTorch's path is its
    own GroupNorm.

    ``step_stats`` (with this norm's ``stats_index`` in it): displaced steps read the stale
    sums from, and write their fresh ones into, one exchange shared by every norm of the
    step; ``exchange`` then serves the ``sync`` steps (and the first displaced step, which
    reads the last ``sync`` step's sums).
    """

    def __init__(
        self,
        norm: nn.GroupNorm,
        exchange: StatsExchange | None,
        clock: StepClock,
        kernels: NormKernels = "torch",
        step_stats: StepStats | None = None,
        stats_index: int = 0,
        ops: ExchangeOps | None = None,
    ) -> None:
        super().__init__()
        self.norm = norm
        self.exchange = exchange
        self.clock = clock
        self.kernels = kernels
        self.step_stats = step_stats
        self.stats_index = stats_index
        self._kernels = _kernel_module() if kernels == "triton" else None
        self._affine_key: tuple | None = None
        self._affine_cache: tuple[torch.Tensor, torch.Tensor] | None = None
        self._ops = ops
        self._op_index = -1 if ops is None else ops.add_norm(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._ops is not None:
            return self._traced_forward(x, self._ops)
        norm = self.norm
        clock = self.clock
        exchange = self.exchange
        groups = norm.num_groups
        kernels = self._kernels
        if kernels is not None and not (x.dtype in kernels.SUPPORTED_DTYPES and x.is_contiguous()):
            kernels = None
        if exchange is None or clock.kind == "local":
            if kernels is None:
                return F.group_norm(x, groups, norm.weight, norm.bias, norm.eps)
            return kernels.normalize_with_stats(
                x, kernels.group_stats(x, groups), groups, norm.weight, norm.bias, norm.eps
            )
        step_stats = self.step_stats if not clock.fresh else None
        if step_stats is not None and clock.posts_for_next:  # computed into the shared vector
            local = step_stats.local(clock.step, self.stats_index)
            if kernels is None:
                local.copy_(local_group_stats(x, groups))
            else:
                kernels.group_stats(x, groups, out=local)
            step_stats.contributed(clock.step)
        elif kernels is None:
            local = local_group_stats(x, groups)
        else:
            local = kernels.group_stats(x, groups)
        fresh = None
        if clock.fresh:
            exchange.post(clock.step, local)
            stats = exchange.wait(clock.step).to(x.device, non_blocking=True)
        else:
            if clock.posts_for_next and step_stats is None:
                exchange.post(clock.step, local)
            stats = self._stale_others(x.device)
            fresh = local
        if kernels is not None:  # adds the two shares inside the kernel
            return kernels.normalize_with_stats(
                x, stats, groups, norm.weight, norm.bias, norm.eps, more=fresh
            )
        return self._normalize(x, stats if fresh is None else stats + fresh)

    def _stale_others(self, device: torch.device) -> torch.Tensor:
        """The other bands' sums ``(3, B, G)`` of the previous step, on ``device`` (a CUDA
        graph of the step replays the copy from the host)."""
        clock = self.clock
        assert self.exchange is not None
        if self.step_stats is not None and clock.previous_kind != "sync":
            return self.step_stats.others(clock.step - 1, self.stats_index)
        return self.exchange.wait_others(clock.step - 1).to(device, non_blocking=True)

    def _traced_forward(self, x: torch.Tensor, ops: ExchangeOps) -> torch.Tensor:
        """The path ``torch.compile`` traces: statistics and normalisation as plain
        operations, the exchange as one ``group_stats`` operator call."""
        norm = self.norm
        phase = self.clock.phase
        if self.exchange is None or phase == "local":
            return F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)
        local = traced_group_stats(x, norm.num_groups)
        stats = ops.group_stats(local, self._op_index)
        if phase == "stale":  # the others' stale sums plus this band's fresh ones
            stats = stats + local
        return traced_normalize(x, stats, norm)

    def exchange_stats(self, local: torch.Tensor) -> torch.Tensor:
        """Behind the ``group_stats`` operator: post this band's sums ``local`` ``(3, B, G)``
        float64 for this step; returns every band's fresh sums (``sync`` steps) or the other
        bands' sums of the previous step (displaced steps), same shape, on the device; a new
        tensor (the compiled graph owns what an operator returns, see
        :mod:`~pcpp_mpi.parallel.exchange_ops`)."""
        clock = self.clock
        exchange = self.exchange
        assert exchange is not None
        if clock.fresh:
            exchange.post(clock.step, local)
            return exchange.wait(clock.step).to(local.device, non_blocking=True).clone()
        if clock.posts_for_next:
            if self.step_stats is not None:
                self.step_stats.local(clock.step, self.stats_index).copy_(local)
                self.step_stats.contributed(clock.step)
            else:
                exchange.post(clock.step, local)
        return self._stale_others(local.device).clone()

    def _normalize(self, x: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
        """``x`` normalised with group statistics ``(3, B, G)`` (sums, squares, counts), then
        the affine map: one batch norm in inference form over ``x`` viewed as
        ``(1, B*C, h, W)``, whose per-(sample, channel) mean and variance are its group's. Five
        kernels in all (in a CUDA graph every small kernel also leaves the GPU idle for a
        moment, docs/BENCHMARKS.md, and a step has ~50 norms)."""
        norm = self.norm
        batch, channels = x.shape[:2]
        groups = norm.num_groups
        moments = stats[:2] / stats[2]  # (2, B, G) float64: mean, mean of squares
        moments[1].addcmul_(moments[0], moments[0], value=-1.0).clamp_min_(0.0)  # variance
        dtype = _parameter_dtype(x.dtype)
        per_channel = torch.empty(
            (2, batch, groups, channels // groups), dtype=dtype, device=x.device
        )
        per_channel.copy_(moments.unsqueeze(-1).expand_as(per_channel))
        mean, var = per_channel.view(2, batch * channels)
        weight, bias = self._tiled_affine(x.device, dtype, batch)
        out = F.batch_norm(
            x.reshape(1, batch * channels, *x.shape[2:]),
            mean,
            var,
            weight,
            bias,
            training=False,
            momentum=0.0,
            eps=norm.eps,
        )
        return out.view(x.shape)

    def _tiled_affine(
        self, device: torch.device, dtype: torch.dtype, batch: int
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Weight and bias repeated for each of ``batch`` samples, ``(B*C,)`` in ``dtype`` on
        ``device``; made once (and again only if the parameters change)."""
        norm = self.norm
        if not norm.affine:
            return None, None
        key = (device, dtype, batch, norm.weight.data_ptr(), norm.weight._version,
               norm.bias.data_ptr(), norm.bias._version)  # fmt: skip
        if self._affine_key != key:
            self._affine_cache = (
                norm.weight.detach().to(device, dtype).repeat(batch),
                norm.bias.detach().to(device, dtype).repeat(batch),
            )
            self._affine_key = key
        assert self._affine_cache is not None
        return self._affine_cache


def _parameter_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics and affine parameters of a half-precision band are kept in float32."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
