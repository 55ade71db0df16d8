"""The analytic byte model (pcpp_mpi.plan.accounting) on small hand-built layer inventories."""

from __future__ import annotations

import pytest

from pcpp_mpi.geometry import Band, split_bands
from pcpp_mpi.plan.accounting import (
    NORM_STAT_BYTES,
    NORM_STATS,
    Traffic,
    cfg_swap_bytes,
    gather_bytes,
    step_traffic,
)
from pcpp_mpi.plan.inventory import AttnSpec, ConvSpec, LayerInventory, NormSpec
from pcpp_mpi.plan.schedule import step_kind

BATCH = 2
ITEMSIZE = 2  # float16


def conv(name: str, level: int, in_channels: int, stride: int = 1) -> ConvSpec:
    return ConvSpec(
        name=name,
        level=level,
        in_channels=in_channels,
        kernel=3,
        stride=stride,
        padding=1,
        dilation=1,
    )


# A two-level UNet slice on a 16 x 8 latent:
#   c1: 3x3 stride 1 at level 0 (width 8), 4 channels  -> halo 1 above, 1 below
#   c2: 3x3 stride 2 at level 0 (width 8), 4 channels  -> halo 1 above, 0 below
#   c3: 3x3 stride 1 at level 1 (width 4), 6 channels  -> halo 1 above, 1 below
#   n1: GroupNorm, 2 groups
#   a1: self-attention at level 1 (width 4), inner dim 16
INVENTORY = LayerInventory(
    levels=2,
    latent_height=16,
    latent_width=8,
    latent_channels=4,
    convs=(conv("c1", 0, 4), conv("c2", 0, 4, stride=2), conv("c3", 1, 6)),
    norms=(NormSpec(name="n1", level=0, channels=8, groups=2),),
    attns=(AttnSpec(name="a1", level=1, inner_dim=16, heads=2),),
)
# 16 rows, unit 2 -> 8 units -> 3 bands of 3, 3, 2 units:
#   level 0: [0, 6), [6, 12), [12, 16);  level 1: [0, 3), [3, 6), [6, 8)
BANDS = split_bands(16, 3, 2)

# bytes of one row of a halo: batch x channels x width x itemsize
C1_ROW = BATCH * 4 * 8 * ITEMSIZE  # 128
C2_ROW = BATCH * 4 * 8 * ITEMSIZE  # 128
C3_ROW = BATCH * 6 * 4 * ITEMSIZE  # 96
# bytes of one row of K and V together: batch x width x 2 x inner_dim x itemsize
KV_ROW = BATCH * 4 * 2 * 16 * ITEMSIZE  # 512
# a GroupNorm all-reduce: (sum, sum of squares, count) x batch x groups float64
NORM = 3 * BATCH * 2 * 8  # 96


def traffic(
    band: int,
    kind: str = "sync",
    pattern: str = "full",
    ratio: float = 0.5,
    inventory: LayerInventory = INVENTORY,
    bands: tuple[Band, ...] = BANDS,
) -> Traffic:
    return step_traffic(
        inventory,
        bands,
        band,
        kind=kind,  # type: ignore[arg-type]
        pattern=pattern,  # type: ignore[arg-type]
        ratio=ratio,
        batch=BATCH,
        itemsize=ITEMSIZE,
    )


def test_hand_constants() -> None:
    assert [(b.index, b.start, b.stop) for b in BANDS] == [(0, 0, 6), (1, 6, 12), (2, 12, 16)]
    assert [b.rows_at_level(1) for b in BANDS] == [3, 3, 2]
    assert (C1_ROW, C2_ROW, C3_ROW, KV_ROW, NORM) == (128, 128, 96, 512, 96)
    assert NORM_STATS * NORM_STAT_BYTES == 24


# -- step_kind -----------------------------------------------------------------------------------


def test_step_kind() -> None:
    steps = 5
    for mode in ("single", "naive"):
        assert [step_kind(s, steps, mode, 2) for s in range(steps)] == ["local"] * steps
    assert [step_kind(s, steps, "sync", 2) for s in range(steps)] == ["sync"] * steps
    assert [step_kind(s, steps, "sync", 0) for s in range(steps)] == ["sync"] * steps
    for mode in ("distrifusion", "pcpp"):
        kinds = [step_kind(s, steps, mode, 2) for s in range(steps)]
        assert kinds == ["sync", "sync", "displaced", "displaced", "displaced_last"]
        # all steps warm: all sync, also the last
        assert [step_kind(s, steps, mode, steps) for s in range(steps)] == ["sync"] * steps
        assert step_kind(0, 1, mode, 1) == "sync"


# -- halos ---------------------------------------------------------------------------------------


def test_halo_bytes_middle_rank() -> None:
    t = traffic(1)
    # c1: 1 row up + 1 row down each way                 -> 2 * 128 sent, 2 * 128 received
    # c2: stride 2 needs 1 row above, none below:
    #     to the band above our first 0 rows, to the band below our last 1 row -> 128 sent
    #     from the band above 1 row, from the band below 0 rows               -> 128 received
    # c3: 2 * 96 each way
    sent = 2 * C1_ROW + 1 * C2_ROW + 2 * C3_ROW
    assert sent == 576
    assert t.sent["halo"] == sent
    assert t.received["halo"] == 2 * C1_ROW + 1 * C2_ROW + 2 * C3_ROW


def test_halo_bytes_top_rank() -> None:
    t = traffic(0)
    # only a band below: c1 1 row each way, c2 sends its last row but receives nothing,
    # c3 1 row each way
    assert t.sent["halo"] == C1_ROW + C2_ROW + C3_ROW == 352
    assert t.received["halo"] == C1_ROW + 0 + C3_ROW == 224


def test_halo_bytes_bottom_rank() -> None:
    t = traffic(2)
    # only a band above: c1 1 row each way, c2 sends 0 rows up but receives 1 row from above,
    # c3 1 row each way
    assert t.sent["halo"] == C1_ROW + 0 + C3_ROW == 224
    assert t.received["halo"] == C1_ROW + C2_ROW + C3_ROW == 352


def test_stride_two_conv_alone_sends_one_side_only() -> None:
    only_c2 = LayerInventory(
        levels=2,
        latent_height=16,
        latent_width=8,
        latent_channels=4,
        convs=(conv("c2", 0, 4, stride=2),),
        norms=(),
        attns=(),
    )
    top, middle, bottom = (traffic(i, inventory=only_c2) for i in range(3))
    # rows flow downwards only: each band sends its last row to the band below
    assert top.sent == {"halo": C2_ROW} and top.received == {}
    assert middle.sent == {"halo": C2_ROW} and middle.received == {"halo": C2_ROW}
    assert bottom.sent == {} and bottom.received == {"halo": C2_ROW}


# -- GroupNorm -----------------------------------------------------------------------------------


@pytest.mark.parametrize("band", [0, 1, 2])
def test_norm_payload(band: int) -> None:
    t = traffic(band)
    assert t.sent["norm"] == NORM_STATS * BATCH * 2 * NORM_STAT_BYTES == NORM
    assert t.received["norm"] == NORM


def test_norm_payload_scales_with_groups_and_layers() -> None:
    inventory = LayerInventory(
        levels=1,
        latent_height=4,
        latent_width=4,
        latent_channels=4,
        convs=(),
        norms=(NormSpec("a", 0, 32, 32), NormSpec("b", 0, 64, 8)),
        attns=(),
    )
    t = traffic(0, inventory=inventory, bands=split_bands(4, 2, 1))
    # 3 stats x batch 2 x (32 + 8) groups x 8 bytes
    assert t.sent == {"norm": 3 * 2 * 40 * 8} == {"norm": 1920}
    assert t.received == t.sent


# -- K/V -----------------------------------------------------------------------------------------


def test_full_kv_goes_to_every_other_rank() -> None:
    # own rows at level 1: 3, 3, 2 of 8; a band sends its whole block to n - 1 = 2 ranks and
    # receives everybody else's rows
    expected = {
        0: (2 * 3 * KV_ROW, (3 + 2) * KV_ROW),  # 3072, 2560
        1: (2 * 3 * KV_ROW, (3 + 2) * KV_ROW),
        2: (2 * 2 * KV_ROW, (3 + 3) * KV_ROW),  # 2048, 3072
    }
    for band, (sent, received) in expected.items():
        for kind, pattern in (("sync", "full"), ("sync", "pcpp"), ("displaced", "full")):
            t = traffic(band, kind=kind, pattern=pattern)
            assert t.sent["kv"] == sent, (band, kind, pattern)
            assert t.received["kv"] == received, (band, kind, pattern)


def test_pcpp_kv_rows_per_neighbour() -> None:
    # ratio 0.5, level-1 rows 3, 3, 2: a band shares ceil(0.5 * own) rows with each neighbour
    # and receives ceil(0.5 * theirs) rows from each
    #   band 0: sends ceil(1.5) = 2 rows down; receives ceil(1.5) = 2 rows from band 1
    #   band 1: sends 2 rows up and 2 down; receives 2 from band 0 and ceil(1.0) = 1 from band 2
    #   band 2: sends ceil(1.0) = 1 row up; receives 2 rows from band 1
    expected = {0: (2, 2), 1: (4, 3), 2: (1, 2)}
    for band, (sent_rows, received_rows) in expected.items():
        t = traffic(band, kind="displaced", pattern="pcpp", ratio=0.5)
        assert t.sent["kv"] == sent_rows * KV_ROW
        assert t.received["kv"] == received_rows * KV_ROW


def test_pcpp_kv_ratio_point_three() -> None:
    # ceil(0.3 * 3) = 1 and ceil(0.3 * 2) = 1: one row per neighbour and direction
    t = traffic(1, kind="displaced", pattern="pcpp", ratio=0.3)
    assert t.sent["kv"] == 2 * KV_ROW
    assert t.received["kv"] == 2 * KV_ROW


def test_pcpp_kv_ratio_zero_and_one() -> None:
    zero = traffic(1, kind="displaced", pattern="pcpp", ratio=0.0)
    assert "kv" not in zero.sent and "kv" not in zero.received
    assert zero.sent["halo"] == 576  # halos and norms are unaffected
    one = traffic(1, kind="displaced", pattern="pcpp", ratio=1.0)
    # whole band to both neighbours; both neighbours' whole bands back
    assert one.sent["kv"] == 2 * 3 * KV_ROW
    assert one.received["kv"] == (3 + 2) * KV_ROW


# -- steps that send nothing ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["local", "displaced_last"])
@pytest.mark.parametrize("band", [0, 1, 2])
def test_local_and_last_displaced_steps_send_nothing(kind: str, band: int) -> None:
    for pattern in ("full", "pcpp"):
        t = traffic(band, kind=kind, pattern=pattern)
        assert t.sent == {} and t.received == {}
        assert t.total_sent == 0 and t.total_received == 0


@pytest.mark.parametrize("kind", ["sync", "displaced"])
def test_one_band_sends_nothing(kind: str) -> None:
    bands = split_bands(16, 1, 2)
    t = traffic(0, kind=kind, bands=bands)
    assert t.sent == {} and t.received == {}


def test_totals() -> None:
    t = traffic(1)
    assert t.total_sent == 576 + NORM + 2 * 3 * KV_ROW
    assert t.total_received == 576 + NORM + 5 * KV_ROW
    assert set(t.sent) == {"halo", "norm", "kv"}


# -- conservation --------------------------------------------------------------------------------

# three levels, 48 x 12 latent, unit 4 -> 12 units: 1..6 bands split unevenly
BIG = LayerInventory(
    levels=3,
    latent_height=48,
    latent_width=12,
    latent_channels=4,
    convs=(
        conv("in", 0, 4),
        conv("down0", 0, 8, stride=2),
        conv("l1", 1, 16),
        conv("down1", 1, 16, stride=2),
        conv("l2", 2, 32),
        ConvSpec("wide", 1, 8, kernel=5, stride=1, padding=2, dilation=1),
        ConvSpec("dil", 0, 8, kernel=3, stride=1, padding=2, dilation=2),
    ),
    norms=(NormSpec("n0", 0, 8, 4), NormSpec("n2", 2, 32, 8)),
    attns=(
        AttnSpec("a0", 0, 8, 1),
        AttnSpec("a1", 1, 16, 2),
        AttnSpec("a2", 2, 32, 4),
    ),
)


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.3, 0.5, 0.77, 1.0])
def test_conservation(n: int, ratio: float) -> None:
    bands = split_bands(48, n, 4)
    for kind, pattern in (("sync", "full"), ("displaced", "full"), ("displaced", "pcpp")):
        per_rank = [
            traffic(i, kind=kind, pattern=pattern, ratio=ratio, inventory=BIG, bands=bands)
            for i in range(n)
        ]
        for key in ("halo", "kv"):
            sent = sum(t.sent.get(key, 0) for t in per_rank)
            received = sum(t.received.get(key, 0) for t in per_rank)
            assert sent == received, (kind, pattern, key)
        # the all-reduce payload is the same on every rank, each way
        assert {t.sent["norm"] for t in per_rank} == {t.received["norm"] for t in per_rank}
        assert len({t.sent["norm"] for t in per_rank}) == 1
    # full K/V: every rank receives exactly the rows it does not own, at every level
    full = [traffic(i, inventory=BIG, bands=bands) for i in range(n)]
    for i, t in enumerate(full):
        expected = 0
        for a in BIG.attns:
            kv_row = BATCH * BIG.width_at(a.level) * 2 * a.inner_dim * ITEMSIZE
            others = (BIG.latent_height >> a.level) - bands[i].rows_at_level(a.level)
            expected += others * kv_row
        assert t.received["kv"] == expected


# -- CFG swap and gather -------------------------------------------------------------------------


def test_cfg_swap_and_gather_bytes() -> None:
    band = BANDS[1]  # 6 latent rows
    # 4 latent channels x 6 rows x 8 columns x 4 bytes (float32)
    assert cfg_swap_bytes(INVENTORY, band) == 4 * 6 * 8 * 4 == 768
    assert gather_bytes(INVENTORY, band) == 768
    assert cfg_swap_bytes(INVENTORY, BANDS[2], itemsize=2) == 4 * 4 * 8 * 2 == 256
    assert gather_bytes(INVENTORY, BANDS[2], itemsize=2) == 256
    # the bands' gathers add up to the whole latent
    assert sum(gather_bytes(INVENTORY, b) for b in BANDS) == 4 * 16 * 8 * 4
