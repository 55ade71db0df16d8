"""The band-parallel layers on one process, with in-memory fake exchanges instead of MPI.

Each band runs in its own thread (as it would on its own rank); the fakes implement the same
post/wait protocol as :mod:`pcpp_mpi.comm.exchanges`: what band ``i`` posts for step ``t`` is
what its neighbours (or every band) receive when they wait for step ``t``; a wait blocks until
the partners have posted.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention
from torch import nn

from pcpp_mpi.comm.exchanges import WireSpec
from pcpp_mpi.comm.frames import TokenFrames
from pcpp_mpi.comm.topology import Topology
from pcpp_mpi.config.schema import ModelConfig
from pcpp_mpi.geometry import Band, conv_halo, level_unit, pcpp_rows, split_bands
from pcpp_mpi.models import unet_config
from pcpp_mpi.parallel.apply import parallelize
from pcpp_mpi.parallel.band_attention import BandSelfAttnProcessor, KVRows
from pcpp_mpi.parallel.band_norm import BandGroupNorm, local_group_stats
from pcpp_mpi.parallel.block_copies import BlockCopies, copy_each
from pcpp_mpi.parallel.clock import StepClock
from pcpp_mpi.parallel.halo_conv import HaloConv2d
from pcpp_mpi.parallel.inventory import LayerInventory, inventory_of

TIMEOUT_S = 20.0
CPU = torch.device("cpu")
Tensor = torch.Tensor


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """The bands already run in parallel threads; intra-op threads on top only oversubscribe
    the CPU (and make a small busy machine very slow)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- in-memory fakes -----------------------------------------------------------------------------


class Mailbox:
    """Messages keyed by ``(step, sender, what)``; ``get`` waits until the key was posted."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._messages: dict[tuple[int, int, str], Any] = {}

    def put(self, step: int, sender: int, what: str, value: Any) -> None:
        with self._cond:
            key = (step, sender, what)
            assert key not in self._messages, f"{key} posted twice"
            self._messages[key] = value
            self._cond.notify_all()

    def get(self, step: int, sender: int, what: str) -> Any:
        key = (step, sender, what)
        with self._cond:
            if not self._cond.wait_for(lambda: key in self._messages, timeout=TIMEOUT_S):
                raise AssertionError(f"nobody posted {key}")
            return self._messages[key]

    def posted(self, step: int, sender: int, what: str) -> bool:
        with self._cond:
            return (step, sender, what) in self._messages


def _clone(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach().clone()


Shape = tuple[int, ...]


def unfilled(shape: Shape | None) -> Tensor | None:
    """A send buffer handed to a layer to fill: NaN until written."""
    return None if shape is None else torch.full(shape, float("nan"))


class FakeRows:
    """Band ``index``'s end of a neighbour exchange (halos, pcpp K/V rows). With
    ``send_shapes`` (to the band above, to the band below) a layer may also fill send buffers
    itself (``fillable_sends`` / ``post_filled``). With ``frames`` (K/V rows) the buffers are
    placed in them around the band as in :class:`pcpp_mpi.comm.exchanges.NeighbourExchange`:
    what is waited for at step ``t`` is written into frame ``t + 1``, sends come from frame
    ``t``."""

    def __init__(
        self,
        box: Mailbox,
        index: int,
        n_bands: int,
        send_shapes: tuple[Shape | None, Shape | None] | None = None,
        recv_shapes: tuple[Shape | None, Shape | None] | None = None,
        frames: TokenFrames | None = None,
    ) -> None:
        self.box, self.index, self.n = box, index, n_bands
        self.send_shapes = send_shapes
        self.frames = frames
        self.filling: dict[int, tuple[Tensor | None, Tensor | None]] = {}
        self.filled_steps: list[int] = []
        self.posted_steps: list[int] = []
        self.waited_steps: list[int] = []
        if frames is not None:
            assert send_shapes is not None and recv_shapes is not None
            self.send_tokens = [0 if s is None else s[1] for s in send_shapes]
            self.recv_tokens = [0 if s is None else s[1] for s in recv_shapes]

    def fillable_sends(self, step: int) -> tuple[Tensor | None, Tensor | None] | None:
        if self.send_shapes is None:
            return None
        up, down = self.send_shapes
        buffers = self.filling[step] = (unfilled(up), unfilled(down))
        return buffers

    def frame(self, step: int) -> tuple[Tensor, Tensor] | None:
        if self.frames is None:
            return None
        start, stop = self.frames.band(self.index)
        first, last = start - self.recv_tokens[0], stop + self.recv_tokens[1]
        parity = step % 2
        return self.frames.tokens(parity, first, last), self.frames.tokens(parity, start, stop)

    def post_filled(self, step: int) -> None:
        self.filled_steps.append(step)
        if step in self.filling:
            self.post(step, *self.filling.pop(step))
            return
        assert self.frames is not None
        own = self.frames.tokens(step % 2, *self.frames.band(self.index))
        up, down = self.send_tokens
        self.post(
            step, own[:, :up] if up else None, own[:, own.shape[1] - down :] if down else None
        )

    def post(self, step: int, to_up: Tensor | None, to_down: Tensor | None) -> None:
        self.posted_steps.append(step)
        self.box.put(step, self.index, "up", _clone(to_up))
        self.box.put(step, self.index, "down", _clone(to_down))

    def wait(self, step: int) -> tuple[Tensor | None, Tensor | None]:
        self.waited_steps.append(step)
        i = self.index
        from_up = self.box.get(step, i - 1, "down") if i > 0 else None
        from_down = self.box.get(step, i + 1, "up") if i + 1 < self.n else None
        if self.frames is not None:  # as MPI would have received them
            start, stop = self.frames.band(i)
            parity = (step + 1) % 2
            if from_up is not None:
                self.frames.tokens(parity, start - from_up.shape[1], start).copy_(from_up)
            if from_down is not None:
                self.frames.tokens(parity, stop, stop + from_down.shape[1]).copy_(from_down)
        return from_up, from_down


class FakeBlocks:
    """Band ``index``'s end of an all-bands exchange (full K/V); with ``frames``, the blocks
    live in them as in :class:`pcpp_mpi.comm.exchanges.AllBandsExchange`."""

    def __init__(
        self, box: Mailbox, index: int, n_bands: int, frames: TokenFrames | None = None
    ) -> None:
        self.box, self.index, self.n = box, index, n_bands
        self.frames = frames
        self.filled_steps: list[int] = []
        self.posted_steps: list[int] = []

    def frame(self, step: int) -> tuple[Tensor, Tensor] | None:
        if self.frames is None:
            return None
        parity = step % 2
        everything = self.frames.tokens(parity, 0, self.frames.starts[-1])
        return everything, self.frames.tokens(parity, *self.frames.band(self.index))

    def fresh_frame(self, step: int) -> tuple[Tensor, Tensor, Tensor] | None:
        if self.frames is None:
            return None
        context = self.frames.tokens((step + 1) % 2, 0, self.frames.starts[-1])
        own = self.frames.band(self.index)
        return context, self.frames.tokens(step % 2, *own), self.frames.tokens((step + 1) % 2, *own)

    def post_filled(self, step: int) -> None:
        assert self.frames is not None
        self.filled_steps.append(step)
        self.post(step, self.frames.tokens(step % 2, *self.frames.band(self.index)))

    def post(self, step: int, own: Tensor) -> None:
        self.posted_steps.append(step)
        self.box.put(step, self.index, "block", _clone(own))

    def wait(self, step: int) -> list[Tensor | None]:
        blocks = [
            None if band == self.index else self.box.get(step, band, "block")
            for band in range(self.n)
        ]
        if self.frames is not None:  # as MPI would have received them
            for band, block in enumerate(blocks):
                if block is not None:
                    self.frames.tokens((step + 1) % 2, *self.frames.band(band)).copy_(block)
        return blocks


class FakeAllreduce:
    """Band ``index``'s end of a statistics all-reduce."""

    def __init__(self, box: Mailbox, index: int, n_bands: int) -> None:
        self.box, self.index, self.n = box, index, n_bands

    def post(self, step: int, local: Tensor) -> None:
        self.box.put(step, self.index, "stats", _clone(local))

    def wait(self, step: int) -> Tensor:
        return sum(self.box.get(step, band, "stats") for band in range(self.n))  # type: ignore[return-value]

    def wait_others(self, step: int) -> Tensor:
        assert self.box.posted(step, self.index, "stats"), f"step {step} never posted"
        return self.wait(step) - self.box.get(step, self.index, "stats")


class FakeStepStats:
    """Band ``index``'s end of the per-step statistics all-reduce of ``shapes`` norms: the
    norms' statistics of a step travel together once the last one is written."""

    def __init__(self, box: Mailbox, index: int, n_bands: int, shapes: Sequence[Shape]) -> None:
        self.box, self.index, self.n = box, index, n_bands
        self.shapes = list(shapes)
        self.written: dict[int, dict[int, Tensor]] = {}
        self.posted_steps: list[int] = []
        self.read_steps: list[int] = []

    def local(self, step: int, index: int) -> Tensor:
        slot = self.written.setdefault(step, {})[index] = torch.empty(
            self.shapes[index], dtype=torch.float64
        )
        return slot

    def contributed(self, step: int) -> None:
        if len(self.written[step]) == len(self.shapes):
            self.posted_steps.append(step)
            self.box.put(
                step,
                self.index,
                "all",
                [self.written[step][k].clone() for k in range(len(self.shapes))],
            )

    def others(self, step: int, index: int) -> Tensor:
        self.read_steps.append(step)
        bands = [b for b in range(self.n) if b != self.index]
        return sum(self.box.get(step, b, "all")[index] for b in bands)  # type: ignore[return-value]


def run_bands(fns: Sequence[Callable[[], Tensor]]) -> list[Tensor]:
    """Run one callable per band concurrently (as ranks would) and return their results."""
    with ThreadPoolExecutor(max_workers=len(fns)) as pool:
        futures = [pool.submit(fn) for fn in fns]
        return [f.result(timeout=2 * TIMEOUT_S) for f in futures]


def split_rows(x: Tensor, rows: Sequence[int], dim: int = 2) -> list[Tensor]:
    return list(torch.split(x, list(rows), dim=dim))


# -- StepClock -----------------------------------------------------------------------------------


def clock_kinds(mode: str, steps: int, warmup: int) -> list[str]:
    clock = StepClock(mode, steps, warmup)
    kinds = []
    for step in range(steps):
        clock.begin(step)
        assert clock.step == step
        kinds.append(clock.kind)
    return kinds


def test_clock_kinds_per_mode() -> None:
    assert clock_kinds("single", 4, 2) == ["local"] * 4
    assert clock_kinds("naive", 4, 2) == ["local"] * 4
    assert clock_kinds("sync", 4, 2) == ["sync"] * 4
    for mode in ("distrifusion", "pcpp"):
        assert clock_kinds(mode, 5, 2) == [
            "sync",
            "sync",
            "displaced",
            "displaced",
            "displaced_last",
        ]
        assert clock_kinds(mode, 3, 1) == ["sync", "displaced", "displaced_last"]
        assert clock_kinds(mode, 3, 3) == ["sync"] * 3
        assert clock_kinds(mode, 2, 1) == ["sync", "displaced_last"]


def test_clock_flags_and_previous_kind() -> None:
    clock = StepClock("pcpp", 4, 1)
    seen = []
    for step in range(4):
        clock.begin(step)
        seen.append((clock.previous_kind, clock.fresh, clock.displaced, clock.posts_for_next))
    assert seen == [
        (None, True, False, False),
        ("sync", False, True, True),
        ("displaced", False, True, True),
        ("displaced", False, True, False),  # last step: nothing posted for a next step
    ]


@pytest.mark.parametrize("mode", ["single", "naive", "sync", "distrifusion", "pcpp"])
def test_clock_posts_nothing_for_next_on_last_step(mode: str) -> None:
    clock = StepClock(mode, 3, 1)
    for step in range(3):
        clock.begin(step)
    assert clock.posts_for_next is False


def test_clock_out_of_order() -> None:
    clock = StepClock("sync", 4, 0)
    with pytest.raises(RuntimeError, match="follows"):
        clock.begin(1)  # must start at 0
    clock.begin(0)
    with pytest.raises(RuntimeError, match="follows"):
        clock.begin(0)  # repeated
    with pytest.raises(RuntimeError, match="follows"):
        clock.begin(2)  # skipped
    clock.begin(1)
    clock.reset()
    assert (clock.step, clock.kind, clock.previous_kind) == (-1, "local", None)
    clock.begin(0)


def test_clock_displaced_without_warmup_raises() -> None:
    # a displaced first step would read a previous step that never happened
    clock = StepClock("distrifusion", 4, 0)
    with pytest.raises(RuntimeError, match="previous step"):
        clock.begin(0)


# -- HaloConv2d ----------------------------------------------------------------------------------


def make_conv(stride: int, seed: int) -> nn.Conv2d:
    torch.manual_seed(seed)
    conv = nn.Conv2d(3, 5, 3, stride=stride, padding=1)
    conv.requires_grad_(False)
    return conv


def halo_convs(
    conv: nn.Conv2d,
    clocks: Sequence[StepClock],
    box: Mailbox,
    copies: BlockCopies | None = None,
    band: tuple[int, int, int] | None = None,
) -> list[HaloConv2d]:
    """One layer per band; with ``copies``, displaced steps assemble their input through it,
    writing send buffers for bands of ``band`` = ``(B, C, W)``."""
    halo = conv_halo(conv.kernel_size[0], conv.stride[0], conv.padding[0], conv.dilation[0])
    n = len(clocks)
    layers = []
    for i in range(n):
        sends = None
        if band is not None:
            batch, channels, width = band
            sends = (
                None if i == 0 or not halo.below else (batch, channels, halo.below, width),
                None if i + 1 == n or not halo.above else (batch, channels, halo.above, width),
            )
        exchange = FakeRows(box, i, n, sends)
        layers.append(HaloConv2d(conv, halo, exchange, clocks[i], copies=copies))
    return layers


CONV_CASES = [
    # (stride, band rows): stride-2 bands start on even rows
    (1, (5, 3)),
    (1, (4, 4, 3)),
    (1, (1, 6, 2)),
    (2, (6, 4)),
    (2, (4, 2, 6)),
]


@pytest.mark.parametrize("stride,rows", CONV_CASES)
def test_halo_conv_sync_equals_full_conv(stride: int, rows: tuple[int, ...]) -> None:
    conv = make_conv(stride, seed=sum(rows) + stride)
    x = torch.randn(2, 3, sum(rows), 7)
    full = conv(x)
    n = len(rows)
    clocks = [StepClock("sync", 1, 0) for _ in range(n)]
    for clock in clocks:
        clock.begin(0)
    layers = halo_convs(conv, clocks, Mailbox())
    parts = split_rows(x, rows)
    outs = run_bands([lambda i=i: layers[i](parts[i]) for i in range(n)])
    for out, r in zip(outs, rows, strict=True):
        assert out.shape[2] == r // stride
    assert torch.allclose(torch.cat(outs, dim=2), full, atol=1e-6)


@pytest.mark.parametrize("stride,rows", CONV_CASES)
def test_halo_conv_naive_differs_at_band_edges(stride: int, rows: tuple[int, ...]) -> None:
    conv = make_conv(stride, seed=7 + stride)
    x = torch.randn(1, 3, sum(rows), 6) + 2.0  # nonzero neighbours: zeros are a visible error
    full = conv(x)
    n = len(rows)
    clocks = [StepClock("naive", 1, 0) for _ in range(n)]
    for clock in clocks:
        clock.begin(0)
        assert clock.kind == "local"
    box = Mailbox()
    layers = halo_convs(conv, clocks, box)
    outs = [layer(part) for layer, part in zip(layers, split_rows(x, rows), strict=True)]
    for layer in layers:  # naive: nothing posted, nothing waited for
        assert isinstance(layer.exchange, FakeRows)
        assert layer.exchange.posted_steps == [] and layer.exchange.waited_steps == []
    naive = torch.cat(outs, dim=2)
    assert naive.shape == full.shape
    wrong = (naive - full).abs().amax(dim=(0, 1, 3)) > 1e-4  # per output row
    # exactly the output rows that read a row of another band are wrong
    halo = conv_halo(3, stride, 1)
    edges = set()
    start = 0
    for index, r in enumerate(rows):
        first, last = start // stride, (start + r) // stride - 1
        if index > 0 and halo.above:
            edges.add(first)
        if index + 1 < n and halo.below:
            edges.add(last)
        start += r
    assert edges, "every case has a band edge with a halo"
    assert {int(i) for i in torch.nonzero(wrong).flatten()} == edges
    # the same layers without an exchange object behave the same
    alone = [HaloConv2d(conv, halo, None, clocks[i]) for i in range(n)]
    outs_alone = [layer(p) for layer, p in zip(alone, split_rows(x, rows), strict=True)]
    assert torch.equal(torch.cat(outs_alone, dim=2), naive)


@pytest.mark.parametrize("copies", [None, copy_each], ids=["concatenate", "block-copies"])
def test_halo_conv_displaced_uses_previous_step(copies: BlockCopies | None) -> None:
    """Step 0 sync (x0), step 1 displaced (x1), step 2 displaced_last (x1 again): step 1 sees
    step 0's halos, step 2 sees step 1's and is exact again. Displaced steps may assemble the
    input and fill the send buffers through block copies (same results)."""
    conv = make_conv(1, seed=3)
    rows = (4, 3, 5)
    n = len(rows)
    x0 = torch.randn(2, 3, sum(rows), 6)
    x1 = x0 + torch.randn_like(x0)
    clocks = [StepClock("distrifusion", 3, 1) for _ in range(n)]
    layers = halo_convs(conv, clocks, Mailbox(), copies, band=(2, 3, 6))

    def step(step: int, x: Tensor) -> Tensor:
        for clock in clocks:
            clock.begin(step)
        parts = [part.contiguous() for part in split_rows(x, rows)]  # as a UNet's activations
        return torch.cat(run_bands([lambda i=i: layers[i](parts[i]) for i in range(n)]), dim=2)

    assert torch.allclose(step(0, x0), conv(x0), atol=1e-6)
    stale = step(1, x1)
    # interior rows are exact, rows next to a boundary used x0's halo
    boundary = {3, 4, 6, 7}  # last/first rows of [0,4), [4,7), [7,12)
    wrong = {int(i) for i in torch.nonzero((stale - conv(x1)).abs().amax(dim=(0, 1, 3)) > 1e-4)}
    assert wrong == boundary
    # a stale row r reads rows r-1..r+1: its own band's from x1, the other band's from x0
    band_of = [0] * 4 + [1] * 3 + [2] * 5
    for row in boundary:
        window = torch.stack(
            [
                x1[:, :, j] if band_of[j] == band_of[row] else x0[:, :, j]
                for j in range(row - 1, row + 2)
            ],
            dim=2,
        )
        expected = F.conv2d(window, conv.weight, conv.bias, padding=(0, 1))[:, :, 0]
        assert torch.allclose(stale[:, :, row], expected, atol=1e-6)
    assert torch.allclose(step(2, x1), conv(x1), atol=1e-6)
    for layer in layers:
        exchange = layer.exchange
        assert isinstance(exchange, FakeRows)
        assert exchange.posted_steps == [0, 1]  # the last step posts nothing
        assert exchange.waited_steps == [0, 0, 1]
        assert exchange.filled_steps == ([] if copies is None else [1])


# -- BandGroupNorm -------------------------------------------------------------------------------


def make_norm(groups: int, channels: int, seed: int) -> nn.GroupNorm:
    torch.manual_seed(seed)
    norm = nn.GroupNorm(groups, channels, eps=1e-5)
    norm.requires_grad_(False)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    return norm


@pytest.mark.parametrize("rows", [(5, 3), (4, 1, 7), (2, 6, 3, 1)])
def test_band_group_norm_sync_equals_group_norm(rows: tuple[int, ...]) -> None:
    norm = make_norm(4, 8, seed=len(rows))
    x = torch.randn(2, 8, sum(rows), 5) * 3.0 + 1.5
    full = norm(x)
    n = len(rows)
    clocks = [StepClock("sync", 1, 0) for _ in range(n)]
    for clock in clocks:
        clock.begin(0)
    box = Mailbox()
    layers = [BandGroupNorm(norm, FakeAllreduce(box, i, n), clocks[i]) for i in range(n)]
    parts = split_rows(x, rows)
    outs = run_bands([lambda i=i: layers[i](parts[i]) for i in range(n)])
    assert torch.allclose(torch.cat(outs, dim=2), full, atol=1e-5)


def test_band_group_norm_follows_weight_changes() -> None:
    """The float64 copies of weight and bias are made again when the parameters change."""
    norm = make_norm(4, 8, seed=3)
    x = torch.randn(2, 8, 6, 5)
    clock = StepClock("sync", 1, 0)
    clock.begin(0)
    layer = BandGroupNorm(norm, FakeAllreduce(Mailbox(), 0, 1), clock)
    assert torch.allclose(layer(x), norm(x), atol=1e-5)
    clock.begin(1)
    with torch.no_grad():
        norm.weight.mul_(-2.0)
        norm.bias.add_(1.0)
    assert torch.allclose(layer(x), norm(x), atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("batch", [1, 3])
def test_band_group_norm_matches_group_norm_per_sample(
    dtype: torch.dtype, affine: bool, batch: int
) -> None:
    """Every sample of the batch is normalised with its own groups' statistics, with or
    without the affine map, in half precision too (statistics and parameters in float32)."""
    torch.manual_seed(batch)
    norm = nn.GroupNorm(3, 6, eps=1e-6, affine=affine).requires_grad_(False)
    if affine:
        nn.init.normal_(norm.weight)
        nn.init.normal_(norm.bias)
    x = torch.randn(batch, 6, 4, 5) * torch.arange(1.0, batch + 1).view(-1, 1, 1, 1) + 2.0
    clock = StepClock("sync", 1, 0)
    clock.begin(0)
    layer = BandGroupNorm(norm.to(dtype), FakeAllreduce(Mailbox(), 0, 1), clock)
    out = layer(x.to(dtype))
    assert out.dtype == dtype and out.shape == x.shape
    expected = norm.float()(x)
    tolerance = 1e-5 if dtype == torch.float32 else 3e-2
    assert torch.allclose(out.float(), expected, atol=tolerance, rtol=tolerance)


def test_band_group_norm_local_uses_band_statistics() -> None:
    norm = make_norm(2, 4, seed=11)
    rows = (3, 5)
    x = torch.randn(1, 4, 8, 4)
    x[:, :, 3:] += 5.0  # different statistics per band
    clock = StepClock("naive", 1, 0)
    clock.begin(0)
    layers = [BandGroupNorm(norm, None, clock) for _ in rows]
    for layer, part in zip(layers, split_rows(x, rows), strict=True):
        assert torch.allclose(layer(part), norm(part), atol=1e-5)
    out = torch.cat([layer(p) for layer, p in zip(layers, split_rows(x, rows), strict=True)], 2)
    assert not torch.allclose(out, norm(x), atol=1e-3)


def test_local_group_stats() -> None:
    x = torch.arange(2 * 4 * 3 * 2, dtype=torch.float32).reshape(2, 4, 3, 2)
    stats = local_group_stats(x, 2)
    assert stats.shape == (3, 2, 2) and stats.dtype == torch.float64
    grouped = x.double().reshape(2, 2, -1)
    assert torch.equal(stats[0], grouped.sum(-1))
    assert torch.equal(stats[1], grouped.square().sum(-1))
    assert torch.equal(stats[2], torch.full((2, 2), 12.0, dtype=torch.float64))


def test_band_group_norm_displaced_correction() -> None:
    """Displaced stats = previous global - previous own + fresh own: a band whose rows alone
    changed since the previous step gets exactly the new global statistics."""
    norm = make_norm(4, 8, seed=5)
    rows = (4, 2, 5)
    n = len(rows)
    x0 = torch.randn(2, 8, sum(rows), 3)
    x1 = x0.clone()
    x1[:, :, 4:6] = torch.randn(2, 8, 2, 3) * 4.0 + 3.0  # only band 1 changes
    clocks = [StepClock("distrifusion", 2, 1) for _ in range(n)]
    box = Mailbox()
    layers = [BandGroupNorm(norm, FakeAllreduce(box, i, n), clocks[i]) for i in range(n)]

    def step(step: int, x: Tensor) -> list[Tensor]:
        for clock in clocks:
            clock.begin(step)
        parts = split_rows(x, rows)
        return run_bands([lambda i=i: layers[i](parts[i]) for i in range(n)])

    assert torch.allclose(torch.cat(step(0, x0), dim=2), norm(x0), atol=1e-5)
    outs = step(1, x1)
    exact = split_rows(norm(x1), rows)
    assert torch.allclose(outs[1], exact[1], atol=1e-5)
    # the unchanged bands used band 1's stale share
    assert not torch.allclose(outs[0], exact[0], atol=1e-3)
    assert torch.allclose(outs[0], split_rows(norm(x0), rows)[0], atol=1e-5)


# -- BandSelfAttnProcessor -----------------------------------------------------------------------

WIDTH = 4
INNER = 32  # heads x head dimension of make_attention


def make_attention(seed: int) -> Attention:
    torch.manual_seed(seed)
    attn = Attention(query_dim=32, heads=4, dim_head=INNER // 4)
    attn.requires_grad_(False).eval()
    return attn


def tokens(x: Tensor, start: int, stop: int) -> Tensor:
    """Tokens of rows ``[start, stop)`` of a ``(B, H*W, C)`` sequence."""
    return x[:, start * WIDTH : stop * WIDTH]


def band_attentions(
    reference: Attention,
    clocks: Sequence[StepClock],
    rows: Sequence[int],
    pattern: str,
    ratio: float,
    frames: bool = False,
    batch: int = 2,
) -> list[Attention]:
    """One attention module per band; with ``frames``, each band's exchanges live in token
    frames of a CFG batch of ``batch`` (displaced steps then read their context in place)."""
    box_blocks, box_rows = Mailbox(), Mailbox()
    n = len(rows)
    layers = []
    for i in range(n):
        attn = copy.deepcopy(reference)  # one module per "rank", same weights
        band_frames = None
        if frames:
            band_frames = TokenFrames(
                WireSpec(CPU, CPU, torch.float32), batch=batch, channels=2 * INNER,
                band_tokens=[r * WIDTH for r in rows],
            )  # fmt: skip
        kv_rows = None
        row_exchange = None
        if pattern == "pcpp":
            kv_rows = KVRows(
                width=WIDTH,
                own_rows=rows[i],
                own=pcpp_rows(ratio, rows[i]),
                from_up=0 if i == 0 else pcpp_rows(ratio, rows[i - 1]),
                from_down=0 if i + 1 == n else pcpp_rows(ratio, rows[i + 1]),
            )

            def shape(tokens: int, edge: bool) -> Shape | None:
                return None if edge or not tokens else (batch, tokens * WIDTH, 2 * INNER)

            sends = (shape(kv_rows.own, i == 0), shape(kv_rows.own, i + 1 == n))
            recvs = (shape(kv_rows.from_up, i == 0), shape(kv_rows.from_down, i + 1 == n))
            row_exchange = FakeRows(box_rows, i, n, sends, recvs, band_frames)
        attn.set_processor(
            BandSelfAttnProcessor(
                clock=clocks[i],
                band_index=i,
                pattern=pattern,  # type: ignore[arg-type]
                blocks=FakeBlocks(box_blocks, i, n, band_frames),
                rows=row_exchange,
                kv_rows=kv_rows,
            )
        )
        layers.append(attn)
    return layers


@pytest.mark.parametrize("rows", [(3, 3), (4, 1, 3), (2, 3, 2, 1)])
def test_band_attention_sync_equals_full_attention(rows: tuple[int, ...]) -> None:
    reference = make_attention(seed=len(rows))
    x = torch.randn(2, sum(rows) * WIDTH, 32)
    full = reference(x)
    n = len(rows)
    clocks = [StepClock("sync", 1, 0) for _ in range(n)]
    for clock in clocks:
        clock.begin(0)
    layers = band_attentions(reference, clocks, rows, "full", 1.0)
    parts = split_rows(x, [r * WIDTH for r in rows], dim=1)
    outs = run_bands([lambda i=i: layers[i](parts[i]) for i in range(n)])
    assert torch.allclose(torch.cat(outs, dim=1), full, atol=1e-6)


def test_band_attention_local_sees_own_band_only() -> None:
    reference = make_attention(seed=2)
    rows = (3, 2)
    x = torch.randn(1, 5 * WIDTH, 32)
    clocks = [StepClock("naive", 1, 0) for _ in rows]
    for clock in clocks:
        clock.begin(0)
    layers = band_attentions(reference, clocks, rows, "full", 1.0)
    parts = split_rows(x, [r * WIDTH for r in rows], dim=1)
    for layer, part in zip(layers, parts, strict=True):
        assert torch.allclose(layer(part), reference(part), atol=1e-6)
    assert not torch.allclose(layers[0](parts[0]), tokens(reference(x), 0, 3), atol=1e-4)


def test_band_attention_follows_weight_changes_and_hooks_of_its_projections() -> None:
    """Keys and values come from one GEMM over stacked weights: stacked again when a weight
    changes in place, and not used at all when something wraps ``to_k``/``to_v``."""
    reference = make_attention(seed=5)
    x = torch.randn(2, 3 * WIDTH, 32)
    clock = StepClock("naive", 1, 0)
    clock.begin(0)
    (layer,) = band_attentions(reference, [clock], (3,), "full", 1.0)
    assert torch.allclose(layer(x), reference(x), atol=1e-6)
    with torch.no_grad():
        for module in (reference, layer):
            module.to_v.weight.mul_(-0.5)
            module.to_k.weight.add_(0.25)
    assert torch.allclose(layer(x), reference(x), atol=1e-6)
    for module in (reference, layer):
        module.to_k.register_forward_hook(lambda _m, _i, out: out * 3.0)
    assert torch.allclose(layer(x), reference(x), atol=1e-6)


COPIES = pytest.mark.parametrize("copies", [None, copy_each], ids=["concatenate", "block-copies"])
FRAMES = pytest.mark.parametrize("frames", [False, True], ids=["buffers", "frames"])


def filled_steps(layer: Attention) -> list[int]:
    """Steps whose send buffers the layer's processor filled itself."""
    processor = layer.processor
    assert isinstance(processor, BandSelfAttnProcessor)
    exchange = processor.rows if processor.pattern == "pcpp" else processor.blocks
    assert isinstance(exchange, FakeRows | FakeBlocks)
    return exchange.filled_steps


@FRAMES
@pytest.mark.parametrize("pattern,rows", [("full", (3, 2, 3)), ("pcpp", (3, 2))])
def test_band_attention_displaced_full_context(
    pattern: str, rows: tuple[int, ...], frames: bool
) -> None:
    """distrifusion, or pcpp with ratio 1 on two bands, on an unchanged input: every step equals
    the full attention (the stale context is the same as the fresh one). With frames,
    displaced steps write their keys and values into the frame and read it in place."""
    reference = make_attention(seed=9)
    n = len(rows)
    x = torch.randn(2, sum(rows) * WIDTH, 32)
    full = reference(x)
    clocks = [StepClock("pcpp" if pattern == "pcpp" else "distrifusion", 4, 1) for _ in rows]
    layers = band_attentions(reference, clocks, rows, pattern, 1.0, frames)
    parts = split_rows(x, [r * WIDTH for r in rows], dim=1)
    for step in range(4):
        for clock in clocks:
            clock.begin(step)
        outs = run_bands([lambda i=i: layers[i](parts[i]) for i in range(n)])
        assert torch.allclose(torch.cat(outs, dim=1), full, atol=1e-6), step
    # step 0 (sync) posts from the frames too, steps 1 and 2 displaced, step 3 is the last;
    # pcpp's sync step posts with its all-bands exchange, its displaced ones with the rows'
    posting = ([0, 1, 2] if pattern == "full" else [1, 2]) if frames else []
    for layer in layers:
        assert filled_steps(layer) == posting


@FRAMES
@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.5, 1.0])
def test_band_attention_pcpp_partial_context(ratio: float, frames: bool) -> None:
    """pcpp: a band attends to itself plus the ceil(ratio * rows) rows of each neighbour next
    to the shared boundary (never a band two away, even with ratio 1); known answer: diffusers'
    own attention with those rows as keys."""
    reference = make_attention(seed=4)
    rows = (4, 3, 5)
    starts = [0, 4, 7]
    n = len(rows)
    x = torch.randn(2, sum(rows) * WIDTH, 32)
    clocks = [StepClock("pcpp", 4, 1) for _ in rows]
    layers = band_attentions(reference, clocks, rows, "pcpp", ratio, frames)
    parts = split_rows(x, [r * WIDTH for r in rows], dim=1)
    expected = []
    for i in range(n):
        above = 0 if i == 0 else pcpp_rows(ratio, rows[i - 1])
        below = 0 if i + 1 == n else pcpp_rows(ratio, rows[i + 1])
        window = tokens(x, starts[i] - above, starts[i] + rows[i] + below)
        expected.append(reference(parts[i], encoder_hidden_states=window))
    for step in range(4):
        for clock in clocks:
            clock.begin(step)
        outs = run_bands([lambda i=i: layers[i](parts[i]) for i in range(n)])
        if step == 0:  # warm-up: full context
            assert torch.allclose(torch.cat(outs, dim=1), reference(x), atol=1e-6)
            continue
        for i in range(n):
            assert torch.allclose(outs[i], expected[i], atol=1e-6), (step, i)
    for layer in layers:
        assert filled_steps(layer) == ([1, 2] if frames else [])


def test_band_attention_rejects_cross_attention_input() -> None:
    reference = make_attention(seed=1)
    clock = StepClock("sync", 1, 0)
    clock.begin(0)
    layers = band_attentions(reference, [clock], (2,), "full", 1.0)
    x = torch.randn(1, 2 * WIDTH, 32)
    with pytest.raises(ValueError, match="self-attention only"):
        layers[0](x, encoder_hidden_states=x)


# -- parallelize on a whole UNet, with a fake RankComm -------------------------------------------


class FakeComm:
    """What :func:`pcpp_mpi.parallel.apply.parallelize` asks of a RankComm, in memory: every
    exchange name gets one mailbox shared by the bands."""

    def __init__(self, boxes: dict[str, Mailbox], lock: threading.Lock, index: int, n: int) -> None:
        self.topology = Topology(n, index, 1)
        self._boxes, self._lock, self._index, self._n = boxes, lock, index, n

    def _box(self, name: str) -> Mailbox:
        with self._lock:
            return self._boxes.setdefault(name, Mailbox())

    def wire_spec(self, device: torch.device, dtype: torch.dtype) -> WireSpec:
        return WireSpec(device, device, dtype)

    def neighbour_exchange(
        self,
        name: str,
        kind: str,
        *,
        send_shapes: tuple[Shape | None, Shape | None],
        recv_shapes: tuple[Shape | None, Shape | None],
        frames: TokenFrames | None = None,
        frame_band: int | None = None,
        **_: object,
    ) -> FakeRows:
        assert frame_band in (None, self._index)
        return FakeRows(self._box(name), self._index, self._n, send_shapes, recv_shapes, frames)

    def all_bands_exchange(
        self, name: str, kind: str, *, frames: TokenFrames | None = None, **_: object
    ) -> FakeBlocks:
        return FakeBlocks(self._box(name), self._index, self._n, frames)

    def stats_allreduce(self, name: str, kind: str, **_: object) -> FakeAllreduce:
        return FakeAllreduce(self._box(name), self._index, self._n)

    def step_stats_allreduce(
        self, name: str, kind: str, *, shapes: Sequence[Shape], **_: object
    ) -> FakeStepStats:
        return FakeStepStats(self._box(name), self._index, self._n, shapes)


LATENT = (16, 8)  # tiny UNet: 3 levels, unit 4 -> 2 bands of 8 rows, or 3 of 8, 4, 4
TINY_CONFIG = unet_config(ModelConfig(builtin="tiny"))


@pytest.fixture(scope="module")
def tiny_unet() -> tuple[UNet2DConditionModel, LayerInventory]:
    """The tiny UNet's architecture with seeded random weights (the weights do not matter)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel.from_config(TINY_CONFIG)
    unet.requires_grad_(False).eval()
    return unet, inventory_of(unet, *LATENT)


def share_weights(unet: UNet2DConditionModel) -> UNet2DConditionModel:
    """A second UNet module tree over the same weight tensors (parallelize only re-wires
    modules, so bands may share weights; much faster than a deep copy)."""
    with torch.device("meta"):
        twin = UNet2DConditionModel.from_config(unet.config)
    twin.load_state_dict(unet.state_dict(), assign=True)
    return twin.requires_grad_(False).eval()


def parallel_unets(
    tiny: tuple[UNet2DConditionModel, LayerInventory],
    n: int,
    mode: str,
    steps: int,
    warmup: int,
    ratio: float = 0.3,
    block_copies: BlockCopies | None = None,
    kv_frames: bool = True,
    stats_per_step: bool = True,
) -> tuple[list[UNet2DConditionModel], list[StepClock], tuple[Band, ...]]:
    unet, inventory = tiny
    bands = split_bands(LATENT[0], n, level_unit(inventory.levels))
    boxes: dict[str, Mailbox] = {}
    lock = threading.Lock()
    unets, clocks = [], []
    for index in range(n):
        band_unet = share_weights(unet)
        clock = StepClock(mode, steps, warmup)
        comm: Any = FakeComm(boxes, lock, index, n)
        parallelize(
            band_unet, inventory, comm, bands, clock, mode=mode, ratio=ratio, batch=2,
            block_copies=block_copies, kv_frames=kv_frames, stats_per_step=stats_per_step,
        )  # fmt: skip
        unets.append(band_unet)
        clocks.append(clock)
    return unets, clocks, bands


def unet_inputs(seed: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(2, 4, *LATENT, generator=generator)
    text = torch.randn(2, 16, TINY_CONFIG["cross_attention_dim"], generator=generator)
    return sample, text


def run_unet_bands(
    unets: Sequence[UNet2DConditionModel],
    clocks: Sequence[StepClock],
    bands: Sequence[Band],
    step: int,
    sample: Tensor,
    text: Tensor,
) -> Tensor:
    for clock in clocks:
        clock.begin(step)

    def band(i: int) -> Tensor:
        part = sample[:, :, bands[i].start : bands[i].stop]
        return unets[i](part, 500, encoder_hidden_states=text).sample

    return torch.cat(run_bands([lambda i=i: band(i) for i in range(len(unets))]), dim=2)


@pytest.mark.parametrize("n", [2, 3])
def test_parallelized_tiny_unet_sync_equals_single(
    tiny_unet: tuple[UNet2DConditionModel, LayerInventory], n: int
) -> None:
    """DESIGN 'Exactness invariants': sync equals single (here on one process, fake comm)."""
    sample, text = unet_inputs(seed=n)
    full = tiny_unet[0](sample, 500, encoder_hidden_states=text).sample
    unets, clocks, bands = parallel_unets(tiny_unet, n, "sync", 2, 0)
    scale = full.abs().max()
    for step in range(2):
        out = run_unet_bands(unets, clocks, bands, step, sample, text)
        assert (out - full).abs().max() <= 1e-5 * scale, step


def test_parallelized_tiny_unet_naive_has_seams(
    tiny_unet: tuple[UNet2DConditionModel, LayerInventory],
) -> None:
    sample, text = unet_inputs(seed=5)
    full = tiny_unet[0](sample, 500, encoder_hidden_states=text).sample
    unets, clocks, bands = parallel_unets(tiny_unet, 2, "naive", 1, 0)
    out = run_unet_bands(unets, clocks, bands, 0, sample, text)
    assert (out - full).abs().max() > 1e-3 * full.abs().max()


@pytest.mark.parametrize(
    "copies,frames",
    [(None, True), (copy_each, True), (None, False)],
    ids=["frames-step-stats", "frames-step-stats-block-copies", "buffers-norm-stats"],
)
@pytest.mark.parametrize("mode,n,ratio", [("distrifusion", 3, 0.3), ("pcpp", 2, 1.0)])
def test_parallelized_tiny_unet_displaced_on_constant_input(
    tiny_unet: tuple[UNet2DConditionModel, LayerInventory],
    mode: str,
    n: int,
    ratio: float,
    copies: BlockCopies | None,
    frames: bool,
) -> None:
    """With the same input at every step, stale context equals fresh context: distrifusion,
    and pcpp with ratio 1 on two bands, equal single at every step, displaced ones included
    (checks which step each layer posts and reads, and the corrected stale GroupNorm; with
    block copies, also the send buffers the convolutions fill themselves; with K/V frames or
    without)."""
    sample, text = unet_inputs(seed=21)
    full = tiny_unet[0](sample, 500, encoder_hidden_states=text).sample
    unets, clocks, bands = parallel_unets(
        tiny_unet, n, mode, 4, 1, ratio, copies, kv_frames=frames, stats_per_step=frames
    )
    scale = full.abs().max()
    kinds = []
    for step in range(4):
        out = run_unet_bands(unets, clocks, bands, step, sample, text)
        kinds.append(clocks[0].kind)
        assert (out - full).abs().max() <= 1e-5 * scale, (step, clocks[0].kind)
    assert kinds == ["sync", "displaced", "displaced", "displaced_last"]
    filled = [
        module.exchange.filled_steps
        for unet in unets
        for module in unet.modules()
        if isinstance(module, HaloConv2d) and isinstance(module.exchange, FakeRows)
        and not module.always_fresh  # conv_in: fresh rows of the step's own latent
    ]  # fmt: skip
    assert filled and all(steps == ([] if copies is None else [1, 2]) for steps in filled)


def test_block_copies_change_no_bit_of_a_displaced_run(
    tiny_unet: tuple[UNet2DConditionModel, LayerInventory],
) -> None:
    """pcpp on 3 bands with a new input every step: assembling the layers' inputs through
    block copies gives exactly the outputs of concatenations (the Triton kernel's copies equal
    PyTorch's: ``test_copy_kernels.py``)."""
    outputs = {}
    for name, copies in (("concatenate", None), ("block-copies", copy_each)):
        unets, clocks, bands = parallel_unets(tiny_unet, 3, "pcpp", 4, 1, 0.3, copies)
        outputs[name] = [
            run_unet_bands(unets, clocks, bands, step, *unet_inputs(seed=30 + step))
            for step in range(4)
        ]
    for concatenated, copied in zip(outputs["concatenate"], outputs["block-copies"], strict=True):
        assert torch.equal(concatenated, copied)


@pytest.mark.parametrize("mode,ratio", [("pcpp", 0.3), ("distrifusion", 0.3)])
def test_frames_and_step_stats_match_separate_exchanges_in_a_displaced_run(
    tiny_unet: tuple[UNet2DConditionModel, LayerInventory], mode: str, ratio: float
) -> None:
    """3 bands, a new input every step (stale and fresh context differ, so reading the wrong
    step's rows or statistics shows): displaced steps reading their K/V context in place from
    the frames and their norms' statistics from one exchange per step give the outputs of
    concatenated separate buffers and per-norm all-reduces, up to float32 rounding (the GEMM
    writes strided output, attention reads strided keys)."""
    outputs = {}
    for frames in (False, True):
        unets, clocks, bands = parallel_unets(
            tiny_unet, 3, mode, 5, 1, ratio, None, kv_frames=frames, stats_per_step=frames
        )
        outputs[frames] = [
            run_unet_bands(unets, clocks, bands, step, *unet_inputs(seed=40 + step))
            for step in range(5)
        ]
        attentions = [m for u in unets for m in u.modules() if isinstance(m, Attention)]
        filled = [filled_steps(m) for m in attentions if m.is_cross_attention is False]
        posting = [0, 1, 2, 3] if mode == "distrifusion" else [1, 2, 3]  # see filled_steps
        assert filled and all(steps == (posting if frames else []) for steps in filled)
        step_stats = {id(m.step_stats): m.step_stats for u in unets for m in u.modules()
                      if isinstance(m, BandGroupNorm) and m.step_stats is not None}  # fmt: skip
        assert len(step_stats) == (3 if frames else 0)  # one per band
        for stats in step_stats.values():
            assert isinstance(stats, FakeStepStats)
            assert stats.posted_steps == [1, 2, 3]  # displaced steps that post for the next
            assert set(stats.read_steps) == {1, 2, 3}  # read by steps 2, 3 and 4
    for step, (buffers, framed) in enumerate(zip(outputs[False], outputs[True], strict=True)):
        assert (framed - buffers).abs().max() <= 1e-5 * buffers.abs().max(), step


def test_conv_in_is_fresh_in_displaced_steps(
    tiny_unet: tuple[UNet2DConditionModel, LayerInventory],
) -> None:
    """The first conv (conv_in) takes fresh halo rows of x_t, also in displaced steps (its
    halo is one latent row, too small to be worth displacing). Step 0 is sync on x0, step 1
    displaced on x1: conv_in's output must match the full conv_in of x1."""
    x0, text = unet_inputs(seed=11)
    x1 = x0 + torch.randn_like(x0)
    unets, clocks, bands = parallel_unets(tiny_unet, 2, "pcpp", 3, 1)
    captured: dict[int, Tensor] = {}
    for i, unet in enumerate(unets):
        unet.conv_in.register_forward_hook(
            lambda _m, _a, out, i=i: captured.__setitem__(i, out.detach().clone())
        )
    run_unet_bands(unets, clocks, bands, 0, x0, text)
    run_unet_bands(unets, clocks, bands, 1, x1, text)
    fresh = tiny_unet[0].conv_in(x1)
    got = torch.cat([captured[0], captured[1]], dim=2)
    assert torch.allclose(got, fresh, atol=1e-5)
