"""The UNet family's parallelize (apply/remove) on the whole tiny UNet with a fake RankComm:
sync equals one process, naive has seams, displaced runs, frames and step statistics,
conv_in."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention
from parallel_fakes import (
    FakeComm,
    FakeRows,
    FakeStepStats,
    Mailbox,
    Tensor,
    filled_steps,
    run_bands,
    torch_threads,
)

from pcpp_mpi.config.schema import ModelConfig
from pcpp_mpi.families.unet import UNetFamily
from pcpp_mpi.geometry import Band, level_unit, split_bands
from pcpp_mpi.models import unet_config
from pcpp_mpi.parallel.apply import BandOptions
from pcpp_mpi.parallel.band_norm import BandGroupNorm
from pcpp_mpi.parallel.clock import StepClock
from pcpp_mpi.parallel.halo_conv import HaloConv2d
from pcpp_mpi.plan.inventory import LayerInventory


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """The bands run in parallel threads: no intra-op threads on top."""
    with torch_threads(1):
        yield


# -- parallelize on a whole UNet, with a fake RankComm -------------------------------------------


LATENT = (16, 8)  # tiny UNet: 3 levels, unit 4 -> 2 bands of 8 rows, or 3 of 8, 4, 4
TINY_CONFIG = unet_config(ModelConfig(builtin="tiny"))
FAMILY = UNetFamily()


@pytest.fixture(scope="module")
def tiny_unet() -> tuple[UNet2DConditionModel, LayerInventory]:
    """The tiny UNet's architecture with seeded random weights (the weights do not matter)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel.from_config(TINY_CONFIG)
    unet.requires_grad_(False).eval()
    return unet, FAMILY.inventory_of(unet, *LATENT)


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
        options = BandOptions(
            mode=mode, ratio=ratio, batch=2, kv_frames=kv_frames, stats_per_step=stats_per_step,
        )  # fmt: skip
        FAMILY.parallelize(band_unet, inventory, comm, bands, clock, options)
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


@pytest.mark.parametrize("frames", [True, False], ids=["frames-step-stats", "buffers-norm-stats"])
@pytest.mark.parametrize("mode,n,ratio", [("distrifusion", 3, 0.3), ("pcpp", 2, 1.0)])
def test_parallelized_tiny_unet_displaced_on_constant_input(
    tiny_unet: tuple[UNet2DConditionModel, LayerInventory],
    mode: str,
    n: int,
    ratio: float,
    frames: bool,
) -> None:
    """With the same input at every step, stale context equals fresh context: distrifusion,
    and pcpp with ratio 1 on two bands, equal single at every step, displaced ones included
    (checks which step each layer posts and reads, and the corrected stale GroupNorm; with
    K/V frames or without)."""
    sample, text = unet_inputs(seed=21)
    full = tiny_unet[0](sample, 500, encoder_hidden_states=text).sample
    unets, clocks, bands = parallel_unets(
        tiny_unet, n, mode, 4, 1, ratio, kv_frames=frames, stats_per_step=frames
    )
    scale = full.abs().max()
    kinds = []
    for step in range(4):
        out = run_unet_bands(unets, clocks, bands, step, sample, text)
        kinds.append(clocks[0].kind)
        assert (out - full).abs().max() <= 1e-5 * scale, (step, clocks[0].kind)
    assert kinds == ["sync", "displaced", "displaced", "displaced_last"]
    posted = [
        module.exchange.posted_steps
        for unet in unets
        for module in unet.modules()
        if isinstance(module, HaloConv2d) and isinstance(module.exchange, FakeRows)
        and not module.always_fresh  # conv_in: fresh rows of the step's own latent
    ]  # fmt: skip
    # the last step posts nothing (no step reads it)
    assert posted and all(steps == [0, 1, 2] for steps in posted)


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
            tiny_unet, 3, mode, 5, 1, ratio, kv_frames=frames, stats_per_step=frames
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
