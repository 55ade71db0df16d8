"""Trace analysis on synthetic rank files with known answers (no MPI).

The run built by :func:`known_run` has two ranks and four steps whose every figure is worked
out by hand in the comments; each test checks the summary against those numbers.
"""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from synthetic_run import write_synthetic_run

from pcpp_mpi.analysis.clock import rank_offsets
from pcpp_mpi.analysis.compare import compare_runs, load_run_images
from pcpp_mpi.analysis.files import load_run
from pcpp_mpi.analysis.images import (
    ImageMismatch,
    compare_images,
    gaussian_filter,
    gaussian_kernel,
    max_abs_diff,
    plot_difference,
    psnr,
    ssim,
)
from pcpp_mpi.analysis.messages import match_messages
from pcpp_mpi.analysis.perfetto import trace_events
from pcpp_mpi.analysis.report import format_text, to_csv, to_json
from pcpp_mpi.analysis.stats import group_exchanges
from pcpp_mpi.analysis.summary import summarize_run, with_baseline
from pcpp_mpi.analysis.timeline import Window, pack_rows, plot_timeline
from pcpp_mpi.output import RunFile, SchemaError
from pcpp_mpi.output.rank_file import TABLES, RankFile, rank_file_name
from pcpp_mpi.trace.recorder import ExchangeRow, PhaseRow, StepRow

REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- builders
def write_rank(
    directory: Path,
    rank: int,
    n_ranks: int,
    *,
    steps: list[StepRow],
    exchanges: list[ExchangeRow] = (),
    traffic: list[tuple[int, int, str, int, int]] = (),
    phases: list[PhaseRow] = (),
    status: str | None = "complete",
    peak: int | None = None,
    band_index: int | None = None,
    cfg_index: int = 0,
    epoch_unix: float = 1.7e9,
) -> Path:
    path = directory / rank_file_name(rank)
    writer = RankFile(
        path,
        {
            "rank": rank,
            "n_ranks": n_ranks,
            "band_index": rank if band_index is None else band_index,
            "cfg_index": cfg_index,
            "band_start": 0,
            "band_stop": 1,
            "mode": "pcpp" if n_ranks > 1 else "single",
            "host": "h",
            "device": "cpu",
            "tracing": True,
            "epoch_unix": epoch_unix,
        },
    )
    writer.append(steps=steps, exchanges=list(exchanges), traffic=list(traffic), phases=phases)
    if status is not None:
        attrs = {"status": status}
        if peak is not None:
            attrs["peak_memory_bytes"] = peak
        writer.set_attrs(**attrs)
    writer.close()
    return path


def write_run_file(directory: Path, n_ranks: int, steps: int, status: str | None = "complete"):
    config = {"generation": {"steps": steps, "height": 64, "width": 64, "prompts": ["p"]}}
    run = RunFile.create(
        directory / "run.h5",
        config_yaml=yaml.safe_dump(config),
        provenance={"mode": "pcpp", "n_ranks": n_ranks},
        n_ranks=n_ranks,
        rank_files=[rank_file_name(r) for r in range(n_ranks)],
    )
    if status is not None:
        run.set_status(status)
    run.close()


def known_run(directory: Path) -> Path:
    """Two ranks, four steps (image 0). Steps are (t_start, t_end, exposed_comm):

    rank 0: (0.0, 1.0, 0)  (1.1, 1.3, .05)  (1.4, 1.7, .10)  (1.8, 2.2, 0)
    rank 1: (0.0, 0.8, 0)  (1.1, 1.4, .10)  (1.4, 1.6, 0)    (1.8, 2.4, .20)
    """
    directory.mkdir(parents=True, exist_ok=True)
    write_run_file(directory, 2, 4)
    s = StepRow
    write_rank(
        directory,
        0,
        2,
        steps=[
            s(0, 0, "sync", 0.0, 1.0, 0.0),
            s(0, 1, "displaced", 1.1, 1.3, 0.05),
            s(0, 2, "displaced", 1.4, 1.7, 0.10),
            s(0, 3, "displaced_last", 1.8, 2.2, 0.0),
        ],
        exchanges=[
            # waited in the first step: excluded unless include_first (in flight .5, exposed .5)
            ExchangeRow(0, 0, "sync", "halo", 1, 10, 10, 0.2, 0.2, 0.7, 0),
            # in flight 1.2 - 0.5 = 0.7, exposed 0.05
            ExchangeRow(0, 0, "a", "halo", 1, 100, 100, 0.5, 1.15, 1.2, 1),
            # collective: in flight 0.4, exposed 0.1
            ExchangeRow(0, 1, "b", "norm", -1, 24, 24, 1.2, 1.5, 1.6, 2),
            # posted, never completed (the job stopped): pending
            ExchangeRow(0, 3, "c", "halo", 1, 7, 7, 2.0),
        ],
        traffic=[(0, 0, "halo", 110, 110), (0, 1, "norm", 24, 24), (0, 3, "gather", 0, 500)],
        phases=[PhaseRow("model_load", -1, -2.0, -1.0), PhaseRow("denoise", 0, 0.0, 2.2)],
        peak=1000,
    )
    write_rank(
        directory,
        1,
        2,
        steps=[
            s(0, 0, "sync", 0.0, 0.8, 0.0),
            s(0, 1, "displaced", 1.1, 1.4, 0.10),
            s(0, 2, "displaced", 1.4, 1.6, 0.0),
            s(0, 3, "displaced_last", 1.8, 2.4, 0.20),
        ],
        exchanges=[
            ExchangeRow(0, 0, "sync", "halo", 0, 10, 10, 0.25, 0.25, 0.7, 0),
            ExchangeRow(0, 0, "a", "halo", 0, 100, 100, 0.6, 1.2, 1.3, 1),  # 0.7 / 0.1
            ExchangeRow(0, 1, "b", "norm", -1, 24, 24, 1.3, 1.8, 2.0, 3),  # 0.7 / 0.2
        ],
        traffic=[(0, 0, "halo", 110, 110), (0, 1, "norm", 24, 24), (0, 3, "gather", 500, 0)],
        phases=[PhaseRow("denoise", 0, 0.0, 2.4)],
        peak=3000,
    )
    return directory


@pytest.fixture
def known(tmp_path: Path) -> Path:
    return known_run(tmp_path / "known")


def approx(value: float) -> object:
    return pytest.approx(value, abs=1e-12)


# ----------------------------------------------------------------------------- rank figures
def test_rank_step_figures_exclude_the_first_step(known: Path) -> None:
    r0, r1 = summarize_run(load_run(known)).ranks
    assert (r0.steps_recorded, r0.steps_counted) == (4, 3)
    assert r0.first_step_s == approx(1.0)
    # counted walls 0.2, 0.3, 0.4: median 0.3; p95 at position 1.9 -> 0.3 + 0.9 * 0.1
    assert r0.step_median_s == approx(0.3)
    assert r0.step_p95_s == approx(0.39)
    assert r0.step_mean_s == approx(0.3)
    # compute = wall - exposed: 0.15, 0.2, 0.4
    assert r0.compute_median_s == approx(0.2)
    assert r0.compute_total_s == approx(0.75)
    assert r0.exposed_median_s == approx(0.05)
    assert r0.exposed_total_s == approx(0.15)
    assert r0.exposed_share == approx(0.15 / 0.9)
    assert r0.by_kind == {"displaced": approx(0.25), "displaced_last": approx(0.4)}
    # rank 1: walls 0.3, 0.2, 0.6; compute 0.2, 0.2, 0.4
    assert r1.step_median_s == approx(0.3)
    assert r1.compute_total_s == approx(0.8)
    assert r1.first_step_s == approx(0.8)


def test_include_first_counts_every_step(known: Path) -> None:
    r0 = summarize_run(load_run(known), include_first=True).ranks[0]
    assert r0.steps_counted == 4
    assert r0.step_median_s == approx(0.35)  # 0.2, 0.3, 0.4, 1.0
    assert r0.first_step_s == approx(1.0)  # still reported


def test_overlap_efficiency(known: Path) -> None:
    run = summarize_run(load_run(known))
    r0, r1 = run.ranks
    # rank 0: in flight 0.7 + 0.4, exposed 0.05 + 0.1 (the first step's exchange left out)
    assert r0.overlap.in_flight == approx(1.1)
    assert r0.overlap.exposed == approx(0.15)
    assert r0.overlap_efficiency == approx(1 - 0.15 / 1.1)
    assert r0.pending_exchanges == 1
    # rank 1: in flight 0.7 + 0.7, exposed 0.1 + 0.2
    assert r1.overlap_efficiency == approx(1 - 0.3 / 1.4)
    # run: pooled over ranks
    assert run.overlap_efficiency == approx(1 - 0.45 / 2.5)
    first = summarize_run(load_run(known), include_first=True).ranks[0]
    assert first.overlap_efficiency == approx(1 - 0.65 / 1.6)


def test_run_figures(known: Path) -> None:
    run = summarize_run(load_run(known))
    assert (run.n_ranks, run.n_bands, run.cfg_groups, run.mode) == (2, 2, 1, "pcpp")
    assert (run.steps_common, run.steps_counted, run.expected_steps) == (4, 3, 4)
    # slowest rank per step: 0.3, 0.3, 0.6 -> median 0.3, p95 0.3 + 0.9 * 0.3
    assert run.step_median_s == approx(0.3)
    assert run.step_p95_s == approx(0.57)
    assert run.first_step_s == approx(1.0)
    assert run.compute_median_s == approx(0.2)  # mean of the ranks' medians 0.2, 0.2
    assert run.exposed_median_s == approx(0.075)  # mean of the medians 0.05 and 0.1
    assert run.load_imbalance == approx(0.8 / 0.775)  # compute totals 0.75 and 0.8
    assert run.peak_memory_bytes == 3000
    assert run.denoise_s == approx(2.4)
    assert run.notes == []


def test_bytes_per_step_by_kind(known: Path) -> None:
    run = summarize_run(load_run(known))
    r0 = run.ranks[0]
    assert r0.traffic_steps == 4
    assert r0.per_step("halo").sent == round(110 / 4)
    assert r0.per_step("norm").received == 6
    assert r0.per_step("gather").received == 500  # per image
    assert r0.sent_per_step == 28 + 6
    assert run.kinds == ["halo", "norm", "gather"]
    assert run.per_step("gather").sent == 500 and run.per_step("gather").received == 500
    assert run.sent_per_step == 2 * (28 + 6)


def test_speedup_against_a_single_baseline(known: Path, tmp_path: Path) -> None:
    base = tmp_path / "single"
    base.mkdir()
    write_run_file(base, 1, 4)
    walls = [2.0, 0.6, 0.6, 0.6]
    steps, t = [], 0.0
    for i, wall in enumerate(walls):
        steps.append(StepRow(0, i, "local", t, t + wall, 0.0))
        t += wall
    write_rank(base, 0, 1, steps=steps, phases=[PhaseRow("denoise", 0, 0.0, 3.8)], peak=5)
    baseline = summarize_run(load_run(base))
    assert baseline.load_imbalance == approx(1.0)
    assert baseline.overlap_efficiency is None  # nothing in flight
    run = with_baseline(summarize_run(load_run(known)), baseline)
    assert run.speedup_step == approx(0.6 / 0.3)
    assert run.speedup_denoise == approx(3.8 / 2.4)
    text = format_text([run], baseline)
    assert "2.00x" in text and "(baseline)" in text


# ----------------------------------------------------------------------------- building blocks
def test_group_exchanges_merges_the_rows_of_one_wait() -> None:
    table = np.array(
        [
            (0, 3, "conv", "halo", 0, 10, 20, 1.0, 2.0, 2.5, 4),
            (0, 3, "conv", "halo", 2, 30, 40, 1.0, 2.0, 2.5, 4),
            (0, 3, "attn", "kv", 0, 5, 5, 1.5, 2.6, 2.6, 4),
            (0, 4, "conv", "halo", 0, 1, 1, 3.0, -1.0, -1.0, -1),
        ],
        dtype=TABLES["exchanges"],
    )
    from pcpp_mpi.analysis.files import decode_table

    grouped = group_exchanges(decode_table(table))
    assert len(grouped) == 2 and grouped.pending == 1
    conv = list(grouped.layer).index("conv")
    assert (grouped.sent[conv], grouped.received[conv], grouped.messages[conv]) == (40, 60, 2)
    assert grouped.in_flight[conv] == approx(1.5) and grouped.exposed[conv] == approx(0.5)


def test_match_messages_pairs_each_send_with_its_receive(known: Path) -> None:
    matching = match_messages(load_run(known))
    pairs = {(m.layer, m.src, m.dst) for m in matching.matched}
    assert pairs == {("sync", 0, 1), ("sync", 1, 0), ("a", 0, 1), ("a", 1, 0)}
    assert matching.unmatched_sends == 0 and matching.unmatched_receives == 0
    message = next(m for m in matching.matched if m.layer == "a" and m.src == 0)
    assert (message.send_post, message.recv_done, message.nbytes) == (0.5, 1.3, 100)


def test_match_messages_maps_cfg_swap_peers_to_world_ranks(tmp_path: Path) -> None:
    """4 ranks = 2 CFG groups x 2 bands: world rank 1 (band 1, cfg 0) swaps with rank 3."""
    write_run_file(tmp_path, 4, 1)
    for rank in range(4):
        band, cfg = rank % 2, rank // 2
        rows = [
            ExchangeRow(0, 0, "conv", "halo", 1 - band, 8, 8, 0.1, 0.2, 0.3, 0),
            ExchangeRow(0, 0, "cfg_swap", "cfg", 1 - cfg, 64, 64, 0.5, 0.5, 0.6, 0),
        ]
        write_rank(
            tmp_path,
            rank,
            4,
            steps=[StepRow(0, 0, "sync", 0, 1, 0.2)],
            exchanges=rows,
            band_index=band,
            cfg_index=cfg,
        )
    matching = match_messages(load_run(tmp_path))
    pairs = {(m.kind, m.src, m.dst) for m in matching.matched}
    assert ("cfg", 1, 3) in pairs and ("cfg", 3, 1) in pairs and ("halo", 2, 3) in pairs
    assert len(matching.matched) == 8 and matching.unmatched_receives == 0


def test_pack_rows_never_overlaps() -> None:
    starts = np.array([0.0, 0.5, 1.0, 1.2, 3.0])
    ends = np.array([1.0, 2.0, 1.1, 4.0, 3.5])
    rows = pack_rows(starts, ends)
    for r in set(rows.tolist()):
        spans = sorted(zip(starts[rows == r], ends[rows == r], strict=True))
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    assert rows.max() == 1


def test_unix_clock_shifts_by_epoch(tmp_path: Path) -> None:
    write_run_file(tmp_path, 2, 1)
    for rank, epoch in ((0, 100.25), (1, 100.0)):
        write_rank(tmp_path, rank, 2, steps=[StepRow(0, 0, "sync", 0, 1, 0)], epoch_unix=epoch)
    run = load_run(tmp_path)
    assert rank_offsets(run) == {0: 0.0, 1: 0.0}
    assert rank_offsets(run, "unix") == {0: pytest.approx(0.25), 1: 0.0}


# ----------------------------------------------------------------------------- partial runs
def test_partial_trace_is_summarised_with_notes(tmp_path: Path) -> None:
    """A killed job: no final status, rank 1 finished one step fewer than rank 0."""
    write_run_file(tmp_path, 2, 10, status=None)
    write_rank(
        tmp_path,
        0,
        2,
        status=None,
        steps=[StepRow(0, i, "displaced", i, i + 0.5, 0.1) for i in range(4)],
    )
    write_rank(
        tmp_path,
        1,
        2,
        status=None,
        steps=[StepRow(0, i, "displaced", i, i + 0.7, 0.0) for i in range(3)],
    )
    run = summarize_run(load_run(tmp_path))
    assert run.status == "running"
    assert run.steps_common == 3 and run.steps_counted == 2
    assert run.step_median_s == approx(0.7)
    assert run.peak_memory_bytes is None and run.denoise_s is None
    text = "\n".join(run.notes)
    assert "status is 'running'" in text and "killed" in text
    assert "3..4 of 10 expected" in text and "every rank finished" in text
    assert "NOTE: run status is 'running'" in format_text([run])


def test_missing_run_file_and_rank_file(tmp_path: Path) -> None:
    write_rank(tmp_path, 1, 2, steps=[StepRow(0, 0, "sync", 0, 1, 0)])
    run = load_run(tmp_path)
    assert [r.rank for r in run.ranks] == [1] and run.meta is None
    assert any("no run.h5" in n for n in run.notes())
    assert summarize_run(run).step_median_s is None  # only the first step: nothing counted


def test_a_running_job_can_be_read_while_it_writes(tmp_path: Path) -> None:
    """The writer holds the file open (HDF5 locks it); the analysis still reads it."""
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from pcpp_mpi.output.rank_file import RankFile
        from pcpp_mpi.trace.recorder import StepRow
        writer = RankFile(Path({str(tmp_path)!r}) / "rank-0000.h5", {{"rank": 0, "n_ranks": 1}})
        writer.append(steps=[StepRow(0, 0, "local", 0.0, 1.0), StepRow(0, 1, "local", 1, 2)])
        print("ready", flush=True)
        sys.stdin.readline()
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        run = load_run(tmp_path)
        assert run.status == "running" and len(run.ranks[0].steps) == 2
    finally:
        child.communicate("\n", timeout=30)


def test_unknown_schema_version_is_refused(known: Path) -> None:
    with h5py.File(known / "rank-0001.h5", "r+") as file:
        file.attrs["schema_version"] = 99
    with pytest.raises(SchemaError, match="schema version 99"):
        load_run(known)


def test_nothing_to_read(tmp_path: Path) -> None:
    from pcpp_mpi.output.errors import OutputError

    with pytest.raises(OutputError, match="no rank files"):
        load_run(tmp_path)
    with pytest.raises(OutputError, match="does not exist"):
        load_run(tmp_path / "nope")


# ----------------------------------------------------------------------------- rendering
def test_csv_and_json_carry_every_figure(known: Path) -> None:
    run = summarize_run(load_run(known))
    rows = to_csv([run]).splitlines()
    header = rows[0].split(",")
    assert len(rows) == 4  # header, two ranks, the run
    for column in (
        "step_median_s",
        "first_step_s",
        "overlap_efficiency",
        "load_imbalance",
        "sent_per_step_halo",
        "received_per_image_gather",
        "peak_memory_bytes",
    ):
        assert column in header
    last = dict(zip(header, rows[-1].split(","), strict=True))
    assert last["rank"] == "run" and float(last["load_imbalance"]) == pytest.approx(0.8 / 0.775)
    document = json.loads(to_json([run]))
    assert "overlap_efficiency" in document["definitions"]
    assert document["runs"][0]["ranks"][1]["peak_memory_bytes"] == 3000
    assert document["runs"][0]["step_p95_s"] == pytest.approx(0.57)


def test_text_says_the_first_step_is_excluded(known: Path) -> None:
    text = format_text([summarize_run(load_run(known))])
    assert "first step excluded" in text and "statistics over 3 steps" in text
    assert "load imbalance" in text and "bytes by kind" in text


def validate_trace_events(document: dict) -> dict[str, int]:
    """Structural checks of a Chrome trace-event document; returns counts by phase."""
    json.loads(json.dumps(document))  # plain JSON
    events = document["traceEvents"]
    counts: dict[str, int] = {}
    async_open: dict[tuple, int] = {}
    flows: dict[object, list[str]] = {}
    for event in events:
        phase = event["ph"]
        counts[phase] = counts.get(phase, 0) + 1
        assert isinstance(event["pid"], int) and isinstance(event.get("tid", 0), int)
        if phase == "M":
            assert event["name"] in (
                "process_name",
                "process_sort_index",
                "thread_name",
                "thread_sort_index",
            )
            continue
        assert isinstance(event["ts"], (int, float)) and math.isfinite(event["ts"])
        assert isinstance(event["name"], str) and event["name"]
        if phase == "X":
            assert event["dur"] >= 0
        elif phase in ("b", "e"):
            key = (event["pid"], event["cat"], event["id"])
            async_open[key] = async_open.get(key, 0) + (1 if phase == "b" else -1)
        elif phase in ("s", "f"):
            flows.setdefault(event["id"], []).append(phase)
            if phase == "f":
                assert event["bp"] == "e"
        else:
            raise AssertionError(f"unexpected phase {phase!r}")
    assert all(v == 0 for v in async_open.values()), "unbalanced async begin/end"
    assert all(sorted(v) == ["f", "s"] for v in flows.values()), "flow without both ends"
    # complete slices on one thread must nest (Perfetto's rule)
    by_thread: dict[tuple, list[tuple[float, float]]] = {}
    for event in events:
        if event["ph"] == "X":
            by_thread.setdefault((event["pid"], event["tid"]), []).append(
                (event["ts"], event["ts"] + event["dur"])
            )
    for spans in by_thread.values():
        spans.sort(key=lambda s: (s[0], -s[1]))
        stack: list[float] = []
        for start, end in spans:
            while stack and stack[-1] <= start + 1e-3:
                stack.pop()
            assert not stack or end <= stack[-1] + 1e-3, "overlapping slices on one thread"
            stack.append(end)
    return counts


def test_perfetto_document_is_valid_and_has_flows(known: Path) -> None:
    document = trace_events(load_run(known))
    counts = validate_trace_events(document)
    assert counts["X"] == 4 + 4 + 3 + 3 + 2 + 1  # steps, waits, phases (per rank)
    assert counts["s"] == counts["f"] == 4  # two layers, both directions
    names = {e["args"]["name"] for e in document["traceEvents"] if e["name"] == "process_name"}
    assert any(n.startswith("rank 0 (band 0") for n in names)
    assert document["otherData"]["unmatched_sends"] == "0"


def test_timeline_png_detailed_and_aggregated(known: Path, tmp_path: Path) -> None:
    from PIL import Image

    path = plot_timeline(load_run(known), tmp_path / "t.png", window=Window(phases=True))
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 1000
    many = tmp_path / "many"
    write_synthetic_run(many, 20, 5, steps_written=3, status="running")
    path = plot_timeline(load_run(many), tmp_path / "many.png")
    with Image.open(path) as image:
        assert image.height > 300
    with pytest.raises(ValueError, match="nothing to draw"):
        plot_timeline(load_run(known), tmp_path / "x.png", window=Window(first_step=10))


def test_synthetic_run_has_its_documented_pattern(tmp_path: Path) -> None:
    write_synthetic_run(tmp_path, 3, 5, walls_s=[0.1, 0.1, 0.1], layers=2, wait_s=0.002)
    run = summarize_run(load_run(tmp_path))
    assert run.steps_common == 5 and run.step_median_s == pytest.approx(0.1)
    assert run.ranks[1].exposed_median_s == pytest.approx(0.004)
    assert len(match_messages(load_run(tmp_path)).matched) == 4 * 2 * 4  # steps x layers x pairs


# ----------------------------------------------------------------------------- images
def _noise(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def test_psnr_and_max_diff() -> None:
    a = np.zeros((16, 16, 3), dtype=np.uint8)
    b = a.copy()
    assert psnr(a, b) == math.inf and max_abs_diff(a, b) == 0
    b[0, 0, 0] = 255  # MSE = 255^2 / 768
    assert psnr(a, b) == pytest.approx(10 * math.log10(768))
    assert max_abs_diff(a, b) == 255


def test_ssim_matches_scikit_image() -> None:
    """Reference values from skimage.metrics.structural_similarity 0.26 (channel_axis=2,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)."""
    rng = np.random.default_rng(0)
    c = rng.integers(0, 256, (40, 53, 3), dtype=np.uint8)
    d = np.clip(c.astype(int) + rng.integers(-30, 30, c.shape), 0, 255).astype(np.uint8)
    assert ssim(c, d) == pytest.approx(0.9730590197628697, abs=1e-9)
    assert psnr(c, d) == pytest.approx(23.574056096475957, abs=1e-9)
    assert ssim(c, c) == pytest.approx(1.0)
    assert ssim(c, _noise(c.shape, 5)) < 0.1


def test_gaussian_filter_keeps_constants_and_mass() -> None:
    kernel = gaussian_kernel()
    assert len(kernel) == 11 and kernel.sum() == pytest.approx(1.0)
    assert np.allclose(gaussian_filter(np.full((13, 17), 3.0), kernel), 3.0)


def test_size_mismatch_names_both_sizes() -> None:
    with pytest.raises(ImageMismatch, match=r"A is 16x8 \(H x W\), B is 8x16 \(H x W\)"):
        compare_images("x", np.zeros((16, 8, 3), np.uint8), np.zeros((8, 16, 3), np.uint8))


def test_compare_runs_and_heat_map(tmp_path: Path) -> None:
    from PIL import Image

    images = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        run = RunFile.create(
            tmp_path / f"{name}.h5",
            config_yaml="",
            provenance={"mode": "x"},
            n_ranks=1,
            rank_files=["rank-0000.h5"],
        )
        images[name] = _noise((24, 32, 3), seed)
        run.add_image(0, images[name], "p", 0)
        run.add_latent(0, np.full((4, 3, 4), seed, dtype=np.float32))
        run.set_status("complete" if name != "c" else "interrupted")
        run.close()
    same = compare_runs(load_run_images(tmp_path / "a.h5"), load_run_images(tmp_path / "b.h5"))
    assert same.images[0].psnr_db == math.inf and same.images[0].ssim == pytest.approx(1.0)
    other = compare_runs(load_run_images(tmp_path / "a.h5"), load_run_images(tmp_path / "c.h5"))
    assert other.images[0].latent_max_abs_diff == pytest.approx(1.0)
    assert any("status 'interrupted'" in n for n in other.notes)
    path = plot_difference(images["a"], images["c"], tmp_path / "d.png", title="t")
    with Image.open(path) as image:
        assert image.format == "PNG"
