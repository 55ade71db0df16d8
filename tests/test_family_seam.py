"""The model-family seam: a second family, defined here and nowhere in the package, runs
band-parallel through the same generic machinery as the UNet (``parallel/``'s layers, the
plan, ``engine/graphs``) without a line of ``families/unet/``.

The toy network has its own call signature (an image and a scale, no text), a strided and a
plain convolution, a GroupNorm and a diffusers self-attention layer on the lower level. Its
``sync`` run on two bands (two ranks' worth of layers in threads, with the in-memory
communicator of ``parallel_fakes``) equals the one-band output; displaced steps on a
constant input equal it too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from parallel_fakes import FakeComm, Mailbox, Tensor, run_bands, torch_threads
from torch import nn

from pcpp_mpi.comm.capture import StepRecorder
from pcpp_mpi.config import job_from_dict
from pcpp_mpi.config.schema import ModelConfig
from pcpp_mpi.engine.graphs import StepGraphs
from pcpp_mpi.families import FAMILIES, family_named
from pcpp_mpi.families.base import ModelFamily
from pcpp_mpi.families.vae_decoder.inventory import trace_decoder
from pcpp_mpi.geometry import Band, level_unit, split_bands
from pcpp_mpi.models import vae_config
from pcpp_mpi.parallel import apply
from pcpp_mpi.parallel.band_attention import BandSelfAttnProcessor
from pcpp_mpi.parallel.band_comm import BandComm
from pcpp_mpi.parallel.band_norm import BandGroupNorm
from pcpp_mpi.parallel.clock import StepClock
from pcpp_mpi.parallel.halo_conv import HaloConv2d
from pcpp_mpi.parallel.inventory import trace_layers
from pcpp_mpi.plan.inventory import LayerInventory
from pcpp_mpi.plan.layout import ModelShape, plan_layout
from pcpp_mpi.plan.report import build_plan

CHANNELS, WIDTH, LEVELS = 3, 16, 2
LATENT = (16, 12)  # two levels: bands are multiples of 2 rows
SCALE = 8  # pixels per latent element (jobs give sizes in pixels)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


class ToyNet(nn.Module):
    """``(B, 3, H, W)`` and a scale -> ``(B, 3, H, W)``: conv, GroupNorm, a strided conv to
    level 1, self-attention over level 1's tokens, nearest upsampling, two convs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(CHANNELS, WIDTH, 3, padding=1)
        self.norm = nn.GroupNorm(4, WIDTH)
        self.down = nn.Conv2d(WIDTH, WIDTH, 3, stride=2, padding=1)
        self.attn = Attention(query_dim=WIDTH, heads=2, dim_head=8)
        self.up = nn.Conv2d(WIDTH, WIDTH, 3, padding=1)
        self.conv_out = nn.Conv2d(WIDTH, CHANNELS, 3, padding=1)

    def forward(self, image: Tensor, scale: Tensor) -> Tensor:
        x = F.silu(self.norm(self.conv_in(image)))
        low = self.down(x)
        batch, channels, rows, width = low.shape
        tokens = low.flatten(2).transpose(1, 2)  # (B, rows*W, C), row-major
        low = low + self.attn(tokens).transpose(1, 2).reshape(batch, channels, rows, width)
        x = x + self.up(F.interpolate(low, scale_factor=2.0, mode="nearest"))
        return self.conv_out(x) * scale


@dataclass
class ToyInputs:
    """The toy network's call signature: ``image`` ``(B, 3, rows, W)`` local, ``scale`` 0-d."""

    image: Tensor
    scale: Tensor

    def copy_into(self, static: ToyInputs) -> None:
        static.image.copy_(self.image)
        static.scale.copy_(self.scale)

    def clone(self) -> ToyInputs:
        return ToyInputs(self.image.clone(), self.scale.clone())


def _example_call(height: int, width: int) -> Callable[[nn.Module], object]:
    meta = torch.device("meta")
    image = torch.empty(1, CHANNELS, height, width, device=meta)
    scale = torch.empty((), device=meta)
    return lambda network: network(image, scale)


@dataclass(frozen=True)
class ToyFamily:
    """A family written against ``families/base`` only."""

    name: str = "toy"

    def model_shape(self, model: ModelConfig) -> ModelShape:
        return ModelShape(LEVELS, CHANNELS, vae_scale_factor=SCALE, network="toy network")

    def trace_inventory(
        self, model: ModelConfig, latent_height: int, latent_width: int
    ) -> LayerInventory:
        with torch.device("meta"):
            network = ToyNet()
        return self.inventory_of(network, latent_height, latent_width)

    def network(self, bundle: Any) -> nn.Module:
        return bundle.toy

    def inventory_of(
        self, network: nn.Module, latent_height: int, latent_width: int
    ) -> LayerInventory:
        with torch.device("meta"):
            meta = ToyNet()
        return trace_layers(
            meta,
            _example_call(latent_height, latent_width),
            latent_height,
            latent_width,
            levels=LEVELS,
            latent_channels=CHANNELS,
            fresh_convs=frozenset({"conv_in"}),
        )

    def parallelize(
        self,
        network: nn.Module,
        inventory: LayerInventory,
        comm: BandComm,
        bands: Sequence[Band],
        clock: StepClock,
        options: apply.BandOptions,
    ) -> apply.ParallelHandle:
        return apply.parallelize(network, inventory, comm, bands, clock, options)

    def call(self, network: Callable[..., Any], inputs: ToyInputs) -> torch.Tensor:
        return network(inputs.image, inputs.scale)


FAMILY: ModelFamily[ToyInputs] = ToyFamily()
MODEL = ModelConfig(builtin="tiny")  # the toy family ignores the model source


@pytest.fixture(scope="module")
def toy() -> ToyNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        network = ToyNet()
    return network.requires_grad_(False).eval()


def share_weights(network: ToyNet) -> ToyNet:
    with torch.device("meta"):
        twin = ToyNet()
    twin.load_state_dict(network.state_dict(), assign=True)
    return twin.requires_grad_(False).eval()


def toy_inputs(seed: int) -> ToyInputs:
    generator = torch.Generator().manual_seed(seed)
    return ToyInputs(torch.randn(2, CHANNELS, *LATENT, generator=generator), torch.tensor(0.5))


def parallel_toys(
    network: ToyNet, n: int, mode: str, steps: int, warmup: int, ratio: float = 0.5
) -> tuple[list[ToyNet], list[StepClock], tuple[Band, ...]]:
    inventory = FAMILY.inventory_of(network, *LATENT)
    bands = split_bands(LATENT[0], n, level_unit(inventory.levels))
    boxes: dict[str, Mailbox] = {}
    lock = threading.Lock()
    networks, clocks = [], []
    for index in range(n):
        band_net = share_weights(network)
        clock = StepClock(mode, steps, warmup)
        comm: Any = FakeComm(boxes, lock, index, n)
        options = apply.BandOptions(mode=mode, ratio=ratio, batch=2)
        FAMILY.parallelize(band_net, inventory, comm, bands, clock, options)
        networks.append(band_net)
        clocks.append(clock)
    return networks, clocks, bands


def run_toy_bands(
    networks: Sequence[ToyNet],
    clocks: Sequence[StepClock],
    bands: Sequence[Band],
    step: int,
    inputs: ToyInputs,
) -> Tensor:
    for clock in clocks:
        clock.begin(step)

    def band(i: int) -> Tensor:
        rows = inputs.image[:, :, bands[i].start : bands[i].stop]
        return FAMILY.call(networks[i], ToyInputs(rows, inputs.scale))

    return torch.cat(run_bands([lambda i=i: band(i) for i in range(len(networks))]), dim=2)


def test_the_toy_inventory_comes_from_the_generic_tracer() -> None:
    inventory = FAMILY.trace_inventory(MODEL, *LATENT)
    assert [(c.name, c.level, c.stride, c.always_fresh) for c in inventory.convs] == [
        ("conv_in", 0, 1, True),
        ("down", 0, 2, False),
        ("up", 0, 1, False),
        ("conv_out", 0, 1, False),
    ]
    assert [(n.name, n.level, n.groups) for n in inventory.norms] == [("norm", 0, 4)]
    assert [(a.name, a.level, a.inner_dim) for a in inventory.attns] == [("attn", 1, 16)]


def test_sync_on_two_bands_equals_one(toy: ToyNet) -> None:
    """The toy family's ``sync`` run on two ranks' bands equals its single-rank output, and
    every layer of its inventory was made band-parallel by the generic machinery."""
    inputs = toy_inputs(seed=1)
    full = FAMILY.call(toy, inputs)
    networks, clocks, bands = parallel_toys(toy, 2, "sync", 2, 0)
    assert [len(b) for b in (networks, bands)] == [2, 2]
    layers = list(networks[0].modules())
    assert sum(isinstance(m, HaloConv2d) for m in layers) == 4
    assert sum(isinstance(m, BandGroupNorm) for m in layers) == 1
    assert isinstance(networks[0].attn.processor, BandSelfAttnProcessor)
    scale = full.abs().max()
    for step in range(2):
        out = run_toy_bands(networks, clocks, bands, step, inputs)
        assert (out - full).abs().max() <= 1e-5 * scale, step


def test_naive_bands_differ_from_one(toy: ToyNet) -> None:
    """A guard for the test above: without exchanges the bands do not add up to the whole."""
    inputs = toy_inputs(seed=2)
    full = FAMILY.call(toy, inputs)
    networks, clocks, bands = parallel_toys(toy, 2, "naive", 1, 0)
    out = run_toy_bands(networks, clocks, bands, 0, inputs)
    assert (out - full).abs().max() > 1e-3 * full.abs().max()


@pytest.mark.parametrize("mode,ratio", [("distrifusion", 0.5), ("pcpp", 1.0)])
def test_displaced_steps_on_a_constant_input_equal_one(
    toy: ToyNet, mode: str, ratio: float
) -> None:
    """Stale context equals fresh context when the input never changes: the displaced modes
    (K/V from the previous step, corrected stale GroupNorm) work for the toy family too."""
    inputs = toy_inputs(seed=3)
    full = FAMILY.call(toy, inputs)
    networks, clocks, bands = parallel_toys(toy, 2, mode, 4, 1, ratio)
    kinds = []
    for step in range(4):
        out = run_toy_bands(networks, clocks, bands, step, inputs)
        kinds.append(clocks[0].kind)
        assert (out - full).abs().max() <= 1e-5 * full.abs().max(), (step, clocks[0].kind)
    assert kinds == ["sync", "displaced", "displaced", "displaced_last"]


def test_remove_restores_the_toy_network(toy: ToyNet) -> None:
    network = share_weights(toy)
    inventory = FAMILY.inventory_of(network, *LATENT)
    bands = split_bands(LATENT[0], 2, level_unit(LEVELS))
    comm: Any = FakeComm({}, threading.Lock(), 0, 2)
    options = apply.BandOptions(mode="sync", ratio=0.5, batch=2)
    handle = FAMILY.parallelize(network, inventory, comm, bands, StepClock("sync", 1, 0), options)
    handle.remove()
    assert not any(isinstance(m, HaloConv2d | BandGroupNorm) for m in network.modules())
    assert not isinstance(network.attn.processor, BandSelfAttnProcessor)


def test_graphs_call_the_toy_family_through_its_signature(toy: ToyNet) -> None:
    """``engine/graphs`` takes the family's call and inputs type (eager backend on the CPU;
    static copies for CUDA graphs come from ``clone``/``copy_into``)."""
    graphs = StepGraphs(toy, FAMILY.call, StepRecorder(), torch.device("cpu"), "eager")
    clock = StepClock("single", 1, 0)
    clock.begin(0)
    inputs = toy_inputs(seed=4)
    assert torch.equal(graphs(clock, inputs), FAMILY.call(toy, inputs))
    static = inputs.clone()
    toy_inputs(seed=5).copy_into(static)
    assert torch.equal(static.image, toy_inputs(seed=5).image)


def test_the_plan_takes_the_toy_family_shape_and_inventory() -> None:
    """``plan``'s layout and bytes come from what any family provides."""
    job = job_from_dict(
        {
            "generation": {"height": LATENT[0] * SCALE, "width": LATENT[1] * SCALE},
            "parallel": {"mode": "sync"},
        }
    )
    layout = plan_layout(job, 2, FAMILY.model_shape(MODEL))
    assert (layout.latent_height, layout.latent_width, layout.unit) == (*LATENT, 2)
    decoder = trace_decoder(vae_config(MODEL), *LATENT)  # the image decode: the tiny VAE's
    plan = build_plan(job, layout, FAMILY.trace_inventory(MODEL, *LATENT), decoder)
    sent = plan.step_traffic(0, "sync", 0).sent
    assert {kind for kind, size in sent.items() if size > 0} >= {"halo", "norm", "kv"}


def test_the_lookup_knows_the_unet_and_the_transformers_not_the_toy() -> None:
    assert [family.name for family in FAMILIES] == ["unet", "pixart", "sd3"]
    assert family_named("unet") is FAMILIES[0]
    assert family_named("pixart") is FAMILIES[1]
    assert family_named("sd3") is FAMILIES[2]
    with pytest.raises(ValueError, match="no model family 'toy'"):
        family_named("toy")
