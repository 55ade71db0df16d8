"""The compiled path with inductor itself (not ``aot_eager``): the toy family of
``test_family_seam`` on two bands, its displaced steps compiled by inductor (C++ kernels on the
CPU), equal the same steps uncompiled.

``aot_eager`` (the backend of the distributed tests) traces the exchange operators but plans no
memory; inductor owns what an operator returns, fuses around it and reuses buffers, which is
where a compiled step can go wrong while the traced one is right. The toy network keeps the
compile to seconds.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from parallel_fakes import FakeComm, Mailbox, Tensor, run_bands, torch_threads
from test_family_seam import FAMILY, LATENT, ToyInputs, ToyNet, share_weights, toy_inputs

from pcpp_mpi.geometry import level_unit, split_bands
from pcpp_mpi.parallel import apply
from pcpp_mpi.parallel.clock import StepClock

pytestmark = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None,
    reason="inductor needs a C++ compiler on the CPU",
)

STEPS, WARMUP = 5, 1


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


@pytest.fixture(autouse=True)
def fresh_compiler(tmp_path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A cache of this test's own (no code from other runs), and no compiled code left over."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch.compiler.reset()
    yield
    torch.compiler.reset()


def _bands_of(mode: str, ratio: float, traced: bool) -> tuple[list[Any], list[StepClock], Any]:
    torch.manual_seed(0)
    network = ToyNet().requires_grad_(False).eval()
    inventory = FAMILY.inventory_of(network, *LATENT)
    bands = split_bands(LATENT[0], 2, level_unit(inventory.levels))
    boxes: dict[str, Mailbox] = {}
    lock = threading.Lock()
    handles, clocks = [], []
    for index in range(2):
        band_net = share_weights(network)
        clock = StepClock(mode, STEPS, WARMUP)
        comm: Any = FakeComm(boxes, lock, index, 2)
        options = apply.BandOptions(mode=mode, ratio=ratio, batch=2, traced=traced)
        handle = FAMILY.parallelize(band_net, inventory, comm, bands, clock, options)
        handles.append((band_net, handle))
        clocks.append(clock)
    return handles, clocks, bands


def _run(mode: str, ratio: float, compiled: bool) -> list[Tensor]:
    """Every step's whole output; the displaced steps through inductor when ``compiled``
    (the warm-up ``sync`` step runs the traced layers uncompiled, as runs do)."""
    handles, clocks, bands = _bands_of(mode, ratio, traced=compiled)
    calls: list[Callable[..., Tensor]] = [net for net, _ in handles]
    stale: list[Callable[..., Tensor]] = [
        torch.compile(net, fullgraph=True, dynamic=False, backend="inductor") if compiled else net
        for net, _ in handles
    ]
    outputs = []
    try:
        for step in range(STEPS):
            inputs = toy_inputs(seed=10 + step)
            for clock in clocks:
                clock.begin(step)
            use = stale if clocks[0].phase == "stale" else calls

            def band(i: int, use: list = use, inputs: ToyInputs = inputs) -> Tensor:
                rows = inputs.image[:, :, bands[i].start : bands[i].stop]
                return FAMILY.call(use[i], ToyInputs(rows, inputs.scale))

            outputs.append(torch.cat(run_bands([lambda i=i: band(i) for i in range(2)]), dim=2))
    finally:
        for _, handle in handles:
            handle.remove()
    return outputs


@pytest.mark.parametrize(("mode", "ratio"), [("pcpp", 0.5), ("distrifusion", 0.3)])
def test_inductor_compiled_displaced_steps_equal_uncompiled(mode: str, ratio: float) -> None:
    eager = _run(mode, ratio, compiled=False)
    compiled = _run(mode, ratio, compiled=True)
    scale = max(out.abs().max() for out in eager)
    for step, (a, b) in enumerate(zip(compiled, eager, strict=True)):
        assert torch.isfinite(a).all(), step
        assert (a - b).abs().max() <= 1e-5 * scale, step
