"""BandSelfAttnProcessor on bands in threads with fake exchanges: sync equals full
attention, displaced full context and pcpp partial context, refusals."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence

import pytest
import torch
from diffusers.models.attention_processor import Attention
from parallel_fakes import (
    CPU,
    FakeBlocks,
    FakeRows,
    Mailbox,
    Shape,
    Tensor,
    filled_steps,
    run_bands,
    split_rows,
    torch_threads,
)

from pcpp_mpi.comm.exchanges import WireSpec
from pcpp_mpi.comm.frames import TokenFrames
from pcpp_mpi.geometry import pcpp_rows
from pcpp_mpi.parallel.band_attention import BandSelfAttnProcessor, KVRows
from pcpp_mpi.parallel.clock import StepClock


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """The bands run in parallel threads: no intra-op threads on top."""
    with torch_threads(1):
        yield


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


FRAMES = pytest.mark.parametrize("frames", [False, True], ids=["buffers", "frames"])


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
