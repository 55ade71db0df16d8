"""The planning layer (pcpp_mpi.plan): pure, importable without torch or mpi4py, and the one
place the run path and ``pcpp-mpi plan`` read a run's facts from."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from pcpp_mpi.config import JobConfig, job_from_dict
from pcpp_mpi.geometry import Band, split_bands
from pcpp_mpi.plan.decode import DecoderAttn, DecoderConv, DecoderInventory, DecoderNorm
from pcpp_mpi.plan.inventory import AttnSpec, ConvSpec, LayerInventory, NormSpec
from pcpp_mpi.plan.layout import ModelShape, plan_layout, unet_batch
from pcpp_mpi.plan.report import PLAN_MODES, build_plan
from pcpp_mpi.plan.schedule import (
    attention_pattern,
    communicates,
    effective_mode,
    phase_of,
    runs_split,
    step_kind,
)
from pcpp_mpi.plan.topology import Topology, cfg_group_count, neighbours, shared_rows

PLAN_MODULES = (
    "pcpp_mpi.plan",
    "pcpp_mpi.plan.schedule",
    "pcpp_mpi.plan.topology",
    "pcpp_mpi.plan.inventory",
    "pcpp_mpi.plan.layout",
    "pcpp_mpi.plan.accounting",
    "pcpp_mpi.plan.report",
    "pcpp_mpi.plan.decode",
)

# a UNet of three levels as its family would describe it (no torch needed)
UNET_SHAPE = ModelShape(levels=3, latent_channels=4, vae_scale_factor=8)
INVENTORY = LayerInventory(
    levels=3,
    latent_height=32,
    latent_width=16,
    latent_channels=4,
    convs=(
        ConvSpec("conv_in", 0, 4, kernel=3, stride=1, padding=1, dilation=1, always_fresh=True),
        ConvSpec("down", 0, 32, kernel=3, stride=2, padding=1, dilation=1),
        ConvSpec("mid", 1, 64, kernel=3, stride=1, padding=1, dilation=1),
    ),
    norms=(NormSpec("norm", 1, 64, 8),),
    attns=(AttnSpec("attn", 1, 64, 2),),
)
# a VAE decoder of two scales (8 pixels per latent row in all, as the tracer would say)
DECODER = DecoderInventory(
    latent_height=32,
    latent_width=16,
    latent_channels=4,
    out_channels=3,
    scale_factor=8,
    force_upcast=False,
    convs=(
        DecoderConv("decoder.conv_in", 1, 4, kernel=3, stride=1, padding=1, dilation=1),
        DecoderConv("decoder.up", 2, 16, kernel=3, stride=1, padding=1, dilation=1),
    ),
    norms=(DecoderNorm("decoder.norm", 1, 16, 4),),
    attns=(DecoderAttn("decoder.attn", 1, 16, 1),),
)


def job(**parallel: object) -> JobConfig:
    return job_from_dict({"generation": {"height": 256, "width": 128}, "parallel": parallel})


def test_the_plan_layer_imports_without_torch_and_mpi4py() -> None:
    """With torch and mpi4py made unimportable, every plan module still imports and plans."""
    code = textwrap.dedent(
        f"""
        import sys
        for name in ("torch", "mpi4py", "diffusers", "triton"):
            sys.modules[name] = None  # any import of them now raises ImportError
        import importlib
        for module in {PLAN_MODULES!r}:
            importlib.import_module(module)
        from pcpp_mpi.config import JobConfig
        from pcpp_mpi.plan.layout import ModelShape, plan_layout
        layout = plan_layout(JobConfig(), 4, ModelShape(3, 4, 8))
        assert [b.rows for b in layout.bands] == [4, 4, 4, 4], layout.bands
        above = [["pcpp_mpi", p] for p in ("engine", "comm", "parallel", "models")]
        loaded = [m for m in sys.modules if m.split(".")[:2] in above]
        assert not loaded, loaded
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


# -- schedule ------------------------------------------------------------------------------


def test_step_kinds_of_every_mode() -> None:
    def kinds(mode: str) -> list[str]:
        return [step_kind(step, 5, mode, 2) for step in range(5)]

    assert kinds("single") == kinds("naive") == ["local"] * 5
    assert kinds("sync") == ["sync"] * 5
    for mode in ("distrifusion", "pcpp"):
        assert kinds(mode) == ["sync", "sync", "displaced", "displaced", "displaced_last"]
    assert [phase_of(k) for k in ("local", "sync", "displaced", "displaced_last")] == [
        "local",
        "fresh",
        "stale",
        "stale",
    ]


def test_what_each_mode_installs() -> None:
    assert [m for m in PLAN_MODES if communicates(m)] == ["sync", "distrifusion", "pcpp"]
    assert [attention_pattern(m) for m in PLAN_MODES] == ["full", "full", "full", "pcpp"]
    assert effective_mode("pcpp", 1) == "single" and effective_mode("pcpp", 2) == "pcpp"
    assert not runs_split("single", 1) and not runs_split("pcpp", 1)
    assert runs_split("naive", 2) and not runs_split("single", 2)


# -- topology ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cfg_parallel", "n_ranks", "groups"),
    [(False, 1, 1), (False, 4, 1), (True, 1, 1), (True, 2, 2), (True, 3, 1), (True, 6, 2)],
)
def test_cfg_group_count(cfg_parallel: bool, n_ranks: int, groups: int) -> None:
    assert cfg_group_count(cfg_parallel, n_ranks) == groups


def test_topology_bands_groups_and_partners() -> None:
    places = [Topology(6, rank, 2) for rank in range(6)]
    assert [(t.band_index, t.cfg_index, t.cfg_partner) for t in places] == [
        (0, 0, 3),
        (1, 0, 4),
        (2, 0, 5),
        (0, 1, 0),
        (1, 1, 1),
        (2, 1, 2),
    ]
    assert [t.is_output_rank for t in places] == [True] + [False] * 5


def test_neighbours_and_shared_rows() -> None:
    bands = split_bands(32, 3, 4)  # 12, 12, 8 rows
    assert neighbours(bands, 0) == (None, bands[1])
    assert neighbours(bands, 1) == (bands[0], bands[2])
    assert neighbours(bands, 2) == (bands[1], None)
    assert neighbours((Band(0, 0, 8),), 0) == (None, None)
    # ratio 0.3 of 12 rows: ceil(3.6) = 4; of 8 rows: ceil(2.4) = 3; at level 1: 6 and 4 rows
    middle = shared_rows(0.3, bands, 1, 0)
    assert (middle.own, middle.from_up, middle.from_down) == (4, 4, 3)
    edge = shared_rows(0.3, bands, 2, 1)
    assert (edge.own, edge.from_up, edge.from_down) == (2, 2, 0)


# -- layout and the plan, from an inventory given as data ---------------------------------


def test_layout_and_batch() -> None:
    layout = plan_layout(job(mode="pcpp"), 4, UNET_SHAPE)
    assert (layout.latent_height, layout.latent_width, layout.unit) == (32, 16, 4)
    assert [(b.start, b.stop) for b in layout.bands] == [(0, 8), (8, 16), (16, 24), (24, 32)]
    assert (layout.cfg_groups, layout.mode, unet_batch(job(), layout)) == (1, "pcpp", 2)
    split = plan_layout(job(mode="sync", cfg_parallel=True), 4, UNET_SHAPE)
    assert (split.cfg_groups, split.n_bands, unet_batch(job(), split)) == (2, 2, 1)
    one = plan_layout(job(mode="pcpp"), 1, UNET_SHAPE)
    assert one.mode == "single"


def test_plan_from_an_inventory_as_data() -> None:
    cfg = job(mode="pcpp", cfg_parallel=True, warmup_steps=1)
    plan = build_plan(cfg, plan_layout(cfg, 4, UNET_SHAPE), INVENTORY, DECODER)
    assert (plan.batch, plan.itemsize) == (1, 4)
    data = plan.as_dict()
    assert [(r["band"], r["cfg_group"]) for r in data["per_rank"]] == [
        (0, 0),
        (1, 0),
        (0, 1),
        (1, 1),
    ]
    assert data["layers"] == {"halo_convs": 3, "group_norms": 1, "self_attentions": 1}
    # only the first CFG group gathers; the CFG swap is the band's float32 latent
    assert plan.gather(2).total_sent == plan.gather(3).total_sent == 0
    assert plan.gather(1).sent == {"gather": 4 * 16 * 16 * 4}
    # parallel decode: every band is split between its two CFG ranks, in decode positions
    assert data["decode"]["bands"] == [[0, 8], [8, 16], [16, 24], [24, 32]]
    assert [r["decode"]["band"] for r in data["per_rank"]] == [[0, 8], [16, 24], [8, 16], [24, 32]]
    assert plan.step_traffic(3, "pcpp", 0).sent["cfg"] == 4 * 16 * 16 * 4
