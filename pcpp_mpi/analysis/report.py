"""Rendering summaries: a text table for people, CSV and JSON for scripts.

CSV and JSON carry base units (seconds, bytes, fractions); the text table scales them.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from types import MappingProxyType
from typing import Any

from pcpp_mpi.analysis.summary import PER_IMAGE_KINDS, RankSummary, RunSummary

#: What each reported figure means (also in the JSON output and docs/TOOLS.md).
DEFINITIONS: MappingProxyType[str, str] = MappingProxyType(
    {
        "step_clock": "whose step times every step figure uses: gpu (CUDA events around each "
        "step on the compute stream, GPU runs), host (perf_counter on the host: CPU runs, files "
        "without /gpu_steps) or mixed (some steps had no GPU time)",
        "first_step_s": "wall time of the run's first step (image 0, step 0), seconds; left out "
        "of every step statistic unless include_first",
        "step_median_s": "median step wall time, seconds (run: of the slowest rank's wall time "
        "per step, over the steps every rank finished)",
        "step_p95_s": "95th percentile of the same, numpy linear interpolation",
        "compute_median_s": "median of wall - exposed_comm per step (run: mean over ranks)",
        "exposed_median_s": "median time blocked in waits per step (run: mean over ranks)",
        "exposed_share": "exposed communication / wall time over the counted steps (run: sums "
        "over ranks)",
        "overlap_efficiency": "1 - sum(exposed wait) / sum(in-flight time) over the exchanges "
        "waited in counted steps; in-flight = t_wait_end - t_post, exposed = t_wait_end - "
        "t_wait_start, one exchange = one layer's messages of one step (run: pooled over ranks)",
        "load_imbalance": "max / mean over ranks of compute time summed over the counted steps "
        "every rank finished (1.0 = even)",
        "sent_per_step_bytes": "bytes handed to MPI per denoising step, mean over recorded steps, "
        "final gather and VAE decode excluded (run: sum over ranks); by kind in "
        "sent_per_step_<kind>; gather, decode and image are per image",
        "peak_memory_bytes": "peak device memory: torch max_memory_allocated on a GPU, max RSS "
        "of the process on the CPU (run: max over ranks); absent until a rank finishes",
        "denoise_s": "total of the 'denoise' phases (all images), seconds (run: max over ranks)",
        "speedup_step": "baseline step_median_s / this run's step_median_s",
        "speedup_denoise": "baseline denoise_s / this run's denoise_s",
    }
)


def fmt_time(seconds: float | None) -> str:
    """Seconds as 'µs', 'ms' or 's' with 4 significant digits; '-' for None."""
    if seconds is None or math.isnan(seconds):
        return "-"
    magnitude = abs(seconds)
    if magnitude >= 1.0:
        return f"{seconds:.3f} s"
    if magnitude >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} µs"


def fmt_bytes(count: float | None) -> str:
    """Bytes with binary prefixes ('B', 'KiB', 'MiB', 'GiB'); '-' for None."""
    if count is None:
        return "-"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024.0 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024.0
    raise AssertionError("unreachable")


def fmt_ratio(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def fmt_pct(value: float | None) -> str:
    return "-" if value is None else f"{100.0 * value:.1f}%"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
    lines = []
    for i, row in enumerate([header, *rows]):
        cells = [
            str(c).ljust(w) if j == 0 else str(c).rjust(w)
            for j, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _steps_line(run: RunSummary) -> str:
    recorded = [r.steps_recorded for r in run.ranks]
    low, high = (min(recorded), max(recorded)) if recorded else (0, 0)
    got = f"{low}" if low == high else f"{low}..{high}"
    of = f" of {run.expected_steps}" if run.expected_steps is not None else ""
    first = (
        "first step included" if run.include_first else "first step excluded, reported as 'first'"
    )
    return (
        f"steps: {got}{of} recorded per rank; statistics over {run.steps_counted} steps ({first})"
    )


def _rank_row(rank: RankSummary) -> list[str]:
    return [
        str(rank.rank),
        str(rank.band_index),
        str(rank.cfg_index),
        str(rank.steps_recorded),
        fmt_time(rank.first_step_s),
        fmt_time(rank.step_median_s),
        fmt_time(rank.step_p95_s),
        fmt_time(rank.compute_median_s),
        fmt_time(rank.exposed_median_s),
        fmt_pct(rank.exposed_share),
        fmt_pct(rank.overlap_efficiency),
        fmt_bytes(rank.sent_per_step),
        fmt_bytes(rank.received_per_step),
        fmt_bytes(rank.peak_memory_bytes),
    ]


RANK_HEADER = (
    "rank",
    "band",
    "cfg",
    "steps",
    "first",
    "step med",
    "step p95",
    "compute med",
    "exposed med",
    "exposed %",
    "overlap",
    "sent/step",
    "recv/step",
    "peak mem",
)


def format_run(run: RunSummary) -> str:
    """One run: header, notes, the per-rank table with a run row, by-kind tables."""
    lines = [
        f"== {run.path} ==",
        f"mode {run.mode}, {run.n_ranks} rank(s) ({run.n_bands} band(s) x {run.cfg_groups} "
        f"CFG group(s)), status {run.status}",
        _steps_line(run),
    ]
    lines += [f"NOTE: {note}" for note in run.notes]
    rows = [_rank_row(r) for r in run.ranks]
    rows.append(
        [
            "run",
            "-",
            "-",
            str(run.steps_common),
            fmt_time(run.first_step_s),
            fmt_time(run.step_median_s),
            fmt_time(run.step_p95_s),
            fmt_time(run.compute_median_s),
            fmt_time(run.exposed_median_s),
            fmt_pct(run.exposed_share),
            fmt_pct(run.overlap_efficiency),
            fmt_bytes(run.sent_per_step),
            fmt_bytes(run.received_per_step),
            fmt_bytes(run.peak_memory_bytes),
        ]
    )
    lines += ["", _table(RANK_HEADER, rows)]
    lines.append(
        f"load imbalance (max/mean compute over ranks): {fmt_ratio(run.load_imbalance)}; "
        f"denoising time: {fmt_time(run.denoise_s)}"
    )
    step_kinds = sorted({k for r in run.ranks for k in r.by_kind})
    if step_kinds:
        kind_rows = [
            [str(r.rank), *[fmt_time(r.by_kind.get(k)) for k in step_kinds]] for r in run.ranks
        ]
        lines += ["", "median step time by step kind:", _table(["rank", *step_kinds], kind_rows)]
    kinds = run.kinds
    if kinds:
        header = ["rank", *[f"{k}{'/image' if k in PER_IMAGE_KINDS else '/step'}" for k in kinds]]
        byte_rows = []
        for r in run.ranks:
            cells = [
                f"{fmt_bytes(r.per_step(k).sent)} / {fmt_bytes(r.per_step(k).received)}"
                for k in kinds
            ]
            byte_rows.append([str(r.rank), *cells])
        totals = [
            f"{fmt_bytes(run.per_step(k).sent)} / {fmt_bytes(run.per_step(k).received)}"
            for k in kinds
        ]
        byte_rows.append(["run", *totals])
        lines += ["", "bytes by kind, sent / received:", _table(header, byte_rows)]
    return "\n".join(lines)


def _label(run: RunSummary, runs: Sequence[RunSummary]) -> str:
    name = run.path.rstrip("/").rsplit("/", 1)[-1] or run.path
    clashes = sum(1 for other in runs if other.path.rstrip("/").endswith("/" + name))
    return run.path if clashes > 1 else name


def format_side_by_side(runs: Sequence[RunSummary], baseline: RunSummary | None) -> str:
    """Several runs, one row each (the baseline first when given)."""
    everything = ([baseline] if baseline is not None else []) + list(runs)
    header = [
        "run",
        "mode",
        "ranks",
        "status",
        "steps",
        "first",
        "step med",
        "step p95",
        "compute med",
        "exposed med",
        "overlap",
        "imbalance",
        "sent/step",
        "peak mem",
        "denoise",
        "speed-up step",
        "speed-up denoise",
    ]
    rows = []
    for run in everything:
        is_base = baseline is not None and run is baseline
        rows.append(
            [
                _label(run, everything) + (" (baseline)" if is_base else ""),
                run.mode,
                str(run.n_ranks),
                run.status,
                str(run.steps_common),
                fmt_time(run.first_step_s),
                fmt_time(run.step_median_s),
                fmt_time(run.step_p95_s),
                fmt_time(run.compute_median_s),
                fmt_time(run.exposed_median_s),
                fmt_pct(run.overlap_efficiency),
                fmt_ratio(run.load_imbalance),
                fmt_bytes(run.sent_per_step),
                fmt_bytes(run.peak_memory_bytes),
                fmt_time(run.denoise_s),
                "1.00x" if is_base else _speedup(run.speedup_step),
                "1.00x" if is_base else _speedup(run.speedup_denoise),
            ]
        )
    return _table(header, rows)


def _speedup(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def format_text(
    runs: Sequence[RunSummary],
    baseline: RunSummary | None = None,
    *,
    per_rank: bool = True,
    extra_notes: Sequence[str] = (),
) -> str:
    """The whole text report: each run's tables, then the side-by-side table."""
    parts = []
    if per_rank:
        parts += [format_run(run) for run in runs]
    if len(runs) > 1 or baseline is not None or not per_rank:
        title = "== runs side by side"
        if baseline is not None:
            title += f" (speed-up = baseline time / run time, baseline {baseline.path})"
        parts.append(title + " ==\n" + format_side_by_side(runs, baseline))
        notes = list(extra_notes)
        if baseline is not None:
            notes = [f"baseline: {n}" for n in baseline.notes] + notes
        if not per_rank:  # the run sections (which carry the notes) were left out
            notes = [f"{_label(r, runs)}: {n}" for r in runs for n in r.notes] + notes
        parts[-1] += "".join(f"\nNOTE: {n}" for n in notes)
    return "\n\n".join(parts) + "\n"


# ----------------------------------------------------------------------------- CSV / JSON


def rank_record(rank: RankSummary) -> dict[str, Any]:
    """One rank's figures in base units, flat (kind columns as ``sent_per_step_<kind>``)."""
    record: dict[str, Any] = {
        "rank": rank.rank,
        "band": rank.band_index,
        "cfg": rank.cfg_index,
        "host": rank.host,
        "device": rank.device,
        "status": rank.status,
        "steps_recorded": rank.steps_recorded,
        "steps_counted": rank.steps_counted,
        "first_step_s": rank.first_step_s,
        "step_median_s": rank.step_median_s,
        "step_p95_s": rank.step_p95_s,
        "step_mean_s": rank.step_mean_s,
        "compute_median_s": rank.compute_median_s,
        "compute_total_s": rank.compute_total_s,
        "exposed_median_s": rank.exposed_median_s,
        "exposed_total_s": rank.exposed_total_s,
        "exposed_share": rank.exposed_share,
        "overlap_efficiency": rank.overlap_efficiency,
        "in_flight_total_s": rank.overlap.in_flight,
        "exposed_wait_total_s": rank.overlap.exposed,
        "exchanges": rank.overlap.exchanges,
        "pending_exchanges": rank.pending_exchanges,
        "sent_per_step_bytes": rank.sent_per_step,
        "received_per_step_bytes": rank.received_per_step,
        "peak_memory_bytes": rank.peak_memory_bytes,
        "denoise_s": rank.denoise_s,
    }
    for kind in sorted(rank.traffic):
        unit = "image" if kind in PER_IMAGE_KINDS else "step"
        record[f"sent_per_{unit}_{kind}"] = rank.per_step(kind).sent
        record[f"received_per_{unit}_{kind}"] = rank.per_step(kind).received
    for kind, value in sorted(rank.by_kind.items()):
        record[f"step_median_s_{kind}"] = value
    return record


def run_record(run: RunSummary) -> dict[str, Any]:
    """The run's own figures in base units, flat."""
    record: dict[str, Any] = {
        "path": run.path,
        "mode": run.mode,
        "status": run.status,
        "n_ranks": run.n_ranks,
        "n_bands": run.n_bands,
        "cfg_groups": run.cfg_groups,
        "include_first": run.include_first,
        "expected_steps": run.expected_steps,
        "steps_common": run.steps_common,
        "steps_counted": run.steps_counted,
        "step_clock": run.step_clock,
        "first_step_s": run.first_step_s,
        "step_median_s": run.step_median_s,
        "step_p95_s": run.step_p95_s,
        "compute_median_s": run.compute_median_s,
        "exposed_median_s": run.exposed_median_s,
        "exposed_share": run.exposed_share,
        "overlap_efficiency": run.overlap_efficiency,
        "in_flight_total_s": run.overlap.in_flight,
        "exposed_wait_total_s": run.overlap.exposed,
        "load_imbalance": run.load_imbalance,
        "sent_per_step_bytes": run.sent_per_step,
        "received_per_step_bytes": run.received_per_step,
        "peak_memory_bytes": run.peak_memory_bytes,
        "denoise_s": run.denoise_s,
        "baseline": run.baseline,
        "speedup_step": run.speedup_step,
        "speedup_denoise": run.speedup_denoise,
    }
    for kind in run.kinds:
        unit = "image" if kind in PER_IMAGE_KINDS else "step"
        record[f"sent_per_{unit}_{kind}"] = run.per_step(kind).sent
        record[f"received_per_{unit}_{kind}"] = run.per_step(kind).received
    return record


def to_json(
    runs: Sequence[RunSummary], baseline: RunSummary | None = None, notes: Sequence[str] = ()
) -> str:
    """``{"definitions", "baseline", "runs": [{..., "notes", "ranks": [...]}], "notes"}``."""

    def one(run: RunSummary) -> dict[str, Any]:
        record = run_record(run)
        record["notes"] = list(run.notes)
        record["ranks"] = [rank_record(r) for r in run.ranks]
        return record

    document = {
        "definitions": dict(DEFINITIONS),
        "baseline": one(baseline) if baseline is not None else None,
        "runs": [one(run) for run in runs],
        "notes": list(notes),
    }
    return json.dumps(document, indent=1, allow_nan=False, default=_no_nan) + "\n"


def _no_nan(value: Any) -> Any:
    raise TypeError(f"not JSON serialisable: {value!r}")


CSV_LEAD = ("run", "mode", "run_status", "rank")


def to_csv(runs: Sequence[RunSummary], baseline: RunSummary | None = None) -> str:
    """One row per rank and one per run (``rank`` = ``run``); base units; blank = none."""
    rows: list[dict[str, Any]] = []
    for run in ([baseline] if baseline is not None else []) + list(runs):
        lead = {"run": run.path, "mode": run.mode, "run_status": run.status}
        for rank in run.ranks:
            rows.append({**lead, **rank_record(rank)})
        record = run_record(run)
        record.pop("path")
        record.pop("mode")
        record.pop("status")
        rows.append({**lead, "rank": "run", **record})
    columns = list(CSV_LEAD)
    for row in rows:
        columns += [key for key in row if key not in columns]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return out.getvalue()
