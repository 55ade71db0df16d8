"""The timeline PNG: one lane per rank over time.

Each lane shows the rank's denoising steps (compute in green, step boundaries as black
ticks), the time it was blocked in waits (exposed communication, red) and, in the detailed
view, every exchange in flight from post to wait end as a thin bar coloured by kind, packed
into rows below the step bar. Above :data:`DETAIL_MAX_RANKS` ranks the view aggregates: steps
and exposed-wait bars only, thinner lanes, no per-message bars. Drawn with matplotlib's
object API on an Agg canvas (no pyplot, no global state).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from pcpp_mpi.analysis.clock import Clock, rank_offsets
from pcpp_mpi.analysis.files import RankTrace, RunTrace
from pcpp_mpi.analysis.stats import Exchanges, group_exchanges

DETAIL_MAX_RANKS = 8
COMPUTE = "#4daf4a"
WAIT = "#e41a1c"
PHASE = "#d9d9d9"
KIND_COLOURS = MappingProxyType(
    {
        "halo": "#377eb8",
        "kv": "#ff7f00",
        "norm": "#984ea3",
        "cfg": "#a65628",
    }
)
OTHER_KIND = "#666666"


@dataclass(frozen=True)
class Window:
    """Which part of a run to draw: an image, a step range [first, stop), set-up phases."""

    image: int | None = None
    first_step: int | None = None
    stop_step: int | None = None
    phases: bool = False

    def wants(self, image: int, step: int) -> bool:
        if self.image is not None and image != self.image:
            return False
        if self.first_step is not None and step < self.first_step:
            return False
        return not (self.stop_step is not None and step >= self.stop_step)


def pack_rows(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Greedy interval packing: a row index per interval so no two in a row overlap."""
    order = np.argsort(starts, kind="stable")
    row_ends: list[float] = []
    rows = np.zeros(len(starts), dtype=np.int64)
    for i in order:
        for r, end in enumerate(row_ends):
            if end <= starts[i]:
                rows[i] = r
                row_ends[r] = ends[i]
                break
        else:
            rows[i] = len(row_ends)
            row_ends.append(ends[i])
    return rows


def _selected_steps(trace: RankTrace, window: Window) -> np.ndarray:
    steps = trace.steps
    mask = [
        window.wants(int(i), int(s)) for i, s in zip(steps["image"], steps["step"], strict=True)
    ]
    return steps[np.array(mask, dtype=bool)] if len(steps) else steps


def _selected_exchanges(trace: RankTrace, window: Window, t0: float, t1: float) -> Exchanges:
    exchanges = group_exchanges(trace.exchanges)
    keep = (exchanges.t_wait_end >= t0) & (exchanges.t_post <= t1)
    return exchanges.select(keep)


def _span(run: RunTrace, window: Window, offsets: dict[int, float]) -> tuple[float, float]:
    starts, ends = [], []
    for trace in run.ranks:
        shift = offsets[trace.rank]
        steps = _selected_steps(trace, window)
        if len(steps):
            starts.append(float(steps["t_start"].min()) + shift)
            ends.append(float(steps["t_end"].max()) + shift)
        if window.phases and len(trace.phases):
            starts.append(float(trace.phases["t_start"].min()) + shift)
            ends.append(float(trace.phases["t_end"].max()) + shift)
    if not starts:
        raise ValueError("nothing to draw: no recorded step in the chosen window")
    t0, t1 = min(starts), max(ends)
    margin = 0.01 * max(t1 - t0, 1e-6)
    return t0 - margin, t1 + margin


def _bars(axes, spans: list[tuple[float, float]], y: float, height: float, colour: str) -> None:
    if spans:
        axes.broken_barh(spans, (y, height), facecolors=colour, edgecolor="none", linewidth=0)


def _draw_lane(
    axes,
    trace: RankTrace,
    lane: int,
    window: Window,
    shift: float,
    t0: float,
    t1: float,
    n_rows: int,
) -> None:
    """One rank's lane; ``n_rows`` message rows (0: aggregated view, no message bars)."""
    detailed = n_rows > 0
    steps = _selected_steps(trace, window)
    top = lane + (0.08 if not detailed else 0.06)
    bar_height = 0.84 if not detailed else 0.36
    if window.phases:
        spans = [
            (float(r["t_start"]) + shift, float(r["t_end"] - r["t_start"]))
            for r in trace.phases
            if r["name"] not in ("denoise",)
        ]
        _bars(axes, spans, top, bar_height, PHASE)
        for row in trace.phases:
            width = float(row["t_end"] - row["t_start"])
            if row["name"] != "denoise" and width > 0.06 * (t1 - t0):
                axes.text(
                    float(row["t_start"]) + shift + width / 2,
                    top + bar_height / 2,
                    str(row["name"]),
                    ha="center",
                    va="center",
                    fontsize=7,
                )
    _bars(
        axes,
        [(float(r["t_start"]) + shift, float(r["wall"])) for r in steps],
        top,
        bar_height,
        COMPUTE,
    )
    exchanges = _selected_exchanges(trace, window, t0 - shift, t1 - shift)
    waits = [
        (float(s) + shift, float(e - s))
        for s, e in zip(exchanges.t_wait_start, exchanges.t_wait_end, strict=True)
        if e > s
    ]
    _bars(axes, waits, top, bar_height, WAIT)
    if len(steps):
        axes.vlines(
            steps["t_start"] + shift,
            top - 0.02,
            top + bar_height + 0.02,
            colors="black",
            linewidth=0.6,
        )
    if not detailed or not len(exchanges):
        return
    rows = pack_rows(exchanges.t_post, exchanges.t_wait_end)
    base, depth = lane + 0.46, 0.5
    pitch = depth / n_rows
    for kind in sorted(set(exchanges.kind.tolist())):
        colour = KIND_COLOURS.get(kind, OTHER_KIND)
        mask = exchanges.kind == kind
        for row in np.unique(rows[mask]):
            sel = mask & (rows == row)
            spans = [
                (float(p) + shift, float(e - p))
                for p, e in zip(exchanges.t_post[sel], exchanges.t_wait_end[sel], strict=True)
            ]
            _bars(axes, spans, base + row * pitch, pitch * 0.8, colour)


def _message_rows(
    trace: RankTrace, window: Window, offsets: dict[int, float], t0: float, t1: float
) -> int:
    shift = offsets[trace.rank]
    exchanges = _selected_exchanges(trace, window, t0 - shift, t1 - shift)
    if not len(exchanges):
        return 1
    return int(pack_rows(exchanges.t_post, exchanges.t_wait_end).max()) + 1


def _step_labels(axes, trace: RankTrace, window: Window, shift: float, t0: float, t1: float):
    steps = _selected_steps(trace, window)
    if not len(steps):
        return
    every = max(1, int(np.ceil(len(steps) / 40)))
    multi_image = len(set(steps["image"].tolist())) > 1
    for row in steps[::every]:
        centre = float(row["t_start"] + row["wall"] / 2) + shift
        if t0 <= centre <= t1:
            label = (
                f"{int(row['image'])}:{int(row['step'])}" if multi_image else str(int(row["step"]))
            )
            axes.text(centre, -0.05, label, ha="center", va="bottom", fontsize=7)


def timeline_title(run: RunTrace) -> str:
    """The figure's title: run, mode, ranks, status and whose step times are drawn (``gpu``:
    CUDA events; ``host``; waits and messages are always host times)."""
    return (
        f"{run.directory}  —  mode {run.mode}, {run.n_ranks} rank(s), status {run.status}, "
        f"step times: {run.step_clock}"
    )


def plot_timeline(
    run: RunTrace,
    path: str | Path,
    *,
    window: Window | None = None,
    clock: Clock = "barrier",
    detailed: bool | None = None,
    width_in: float = 14.0,
    dpi: int = 110,
) -> Path:
    """Draw the timeline of ``run`` into the PNG ``path``; returns the path.

    ``detailed`` (default: at most :data:`DETAIL_MAX_RANKS` ranks) draws every exchange in
    flight; otherwise only steps and exposed waits. Raises ValueError if no step of the
    window was recorded.
    """
    window = window or Window()
    offsets = rank_offsets(run, clock)
    t0, t1 = _span(run, window, offsets)
    ranks = sorted(run.ranks, key=lambda t: t.rank)
    n = len(ranks)
    detailed = n <= DETAIL_MAX_RANKS if detailed is None else detailed
    n_rows = 0
    if detailed:
        n_rows = max(_message_rows(t, window, offsets, t0, t1) for t in ranks)
    lane_in = 0.45 + min(0.035 * n_rows, 1.0) if detailed else max(0.12, min(0.45, 9.0 / n))
    figure = Figure(figsize=(width_in, 1.6 + n * lane_in), dpi=dpi)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    for lane, trace in enumerate(ranks):
        _draw_lane(axes, trace, lane, window, offsets[trace.rank], t0, t1, n_rows)
        if lane:
            axes.axhline(lane, color="#bbbbbb", linewidth=0.5)
    labelled = max(ranks, key=lambda t: len(_selected_steps(t, window)))
    _step_labels(axes, labelled, window, offsets[labelled.rank], t0, t1)
    axes.set_xlim(t0, t1)
    axes.set_ylim(n, -0.25)
    every = max(1, int(np.ceil(n / 32)))
    ticks = list(range(0, n, every))
    axes.set_yticks([t + 0.5 for t in ticks])
    axes.set_yticklabels([f"rank {ranks[t].rank}" for t in ticks], fontsize=8)
    axes.tick_params(axis="y", length=0)
    status = run.status
    title = timeline_title(run)
    figure.suptitle(
        title, fontsize=10, x=0.01, ha="left", color="black" if status == "complete" else "#b00000"
    )
    handles = [
        Patch(color=COMPUTE, label="step (compute)"),
        Patch(color=WAIT, label="blocked in wait (exposed)"),
    ]
    if detailed:
        kinds = sorted({k for t in ranks for k in set(t.exchanges["kind"].tolist())})
        handles += [
            Patch(color=KIND_COLOURS.get(k, OTHER_KIND), label=f"{k} in flight") for k in kinds
        ]
    if window.phases:
        handles.append(Patch(color=PHASE, label="set-up / decode phases"))
    axes.legend(
        handles=handles,
        loc="lower right",
        bbox_to_anchor=(1.0, 1.0),
        ncol=len(handles),
        fontsize=8,
        frameon=False,
        borderaxespad=0.2,
    )
    note = "step numbers at the top; black ticks: step starts"
    if not detailed:
        note += f"; aggregated view ({n} ranks > {DETAIL_MAX_RANKS}): steps and waits only"
    axes.set_xlabel(f"time since the run's epoch (s, clock: {clock});  {note}")
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path)
    return path
