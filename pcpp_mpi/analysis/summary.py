"""The figures of ``pcpp-mpi summary``: per rank and per run, from the rank files' tables.

Every time is in seconds, every byte count in bytes. Which steps count:

- the run's *first step* (the lowest ``(image, step)``, normally image 0 step 0) carries
  one-time costs (allocation, lazy initialisation, the first exchange): it is reported on its
  own as ``first_step_s`` and left out of every step statistic unless ``include_first``;
- every other recorded step counts (``sync`` warm-up steps of displaced modes included: the
  ``by_kind`` medians separate them).

Per rank: step wall time median and p95, compute (``wall - exposed_comm``) and exposed
communication (time blocked in waits during the step) medians and totals, overlap efficiency
(:mod:`pcpp_mpi.analysis.stats`), bytes by kind, peak memory.

Per run: step time of a step = the slowest rank's wall time for it (over the steps *every*
rank finished); compute/exposed = mean over ranks of the rank medians; overlap efficiency
pooled over every rank's exchanges; load imbalance = max / mean over ranks of the compute
time summed over the counted steps every rank finished (1.0 = perfectly even); bytes per step
= sum over ranks; peak memory = max over ranks; denoising time = max over ranks of the
``denoise`` phases' total. Speed-up against a baseline (a ``single`` run) = baseline time /
this run's time, for the median step time and for the denoising time.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from pcpp_mpi.analysis.files import RankTrace, RunTrace
from pcpp_mpi.analysis.stats import (
    Overlap,
    group_exchanges,
    median,
    overlap,
    percentile,
    step_keys,
)

GATHER_KIND = "gather"
#: traffic kinds that happen once per image, after the denoising (the latent gather, the
#: parallel VAE decode's exchanges, the image rows to rank 0): reported per image
PER_IMAGE_KINDS = (GATHER_KIND, "decode", "image")


@dataclass(frozen=True)
class KindBytes:
    """Bytes of one traffic kind over the whole run (all images, all steps)."""

    sent: int
    received: int


@dataclass(frozen=True)
class RankSummary:
    """The figures of one rank (seconds, bytes); None where nothing was recorded."""

    rank: int
    band_index: int
    cfg_index: int
    host: str
    device: str
    status: str
    steps_recorded: int
    steps_counted: int
    first_step_s: float | None
    step_median_s: float | None
    step_p95_s: float | None
    step_mean_s: float | None
    wall_total_s: float
    compute_median_s: float | None
    compute_total_s: float
    exposed_median_s: float | None
    exposed_total_s: float
    overlap: Overlap
    pending_exchanges: int
    by_kind: dict[str, float]
    traffic: dict[str, KindBytes]
    traffic_steps: int
    images: int
    peak_memory_bytes: int | None
    denoise_s: float | None

    @property
    def exposed_share(self) -> float | None:
        """Exposed communication / wall time over the counted steps."""
        return self.exposed_total_s / self.wall_total_s if self.wall_total_s > 0 else None

    @property
    def overlap_efficiency(self) -> float | None:
        return self.overlap.efficiency

    def per_step(self, kind: str) -> KindBytes:
        """Mean bytes per denoising step of ``kind`` (per image for ``PER_IMAGE_KINDS``)."""
        total = self.traffic.get(kind, KindBytes(0, 0))
        count = self.images if kind in PER_IMAGE_KINDS else self.traffic_steps
        if count <= 0:
            return KindBytes(0, 0)
        return KindBytes(round(total.sent / count), round(total.received / count))

    @property
    def sent_per_step(self) -> int:
        """Bytes sent per step, every kind but the per-image ones (gather, decode)."""
        return sum(self.per_step(k).sent for k in self.traffic if k not in PER_IMAGE_KINDS)

    @property
    def received_per_step(self) -> int:
        return sum(self.per_step(k).received for k in self.traffic if k not in PER_IMAGE_KINDS)


@dataclass(frozen=True)
class RunSummary:
    """The figures of one run and its ranks (seconds, bytes)."""

    path: str
    mode: str
    status: str
    n_ranks: int
    n_bands: int
    cfg_groups: int
    include_first: bool
    expected_steps: int | None
    steps_common: int
    steps_counted: int
    first_step_s: float | None
    step_median_s: float | None
    step_p95_s: float | None
    compute_median_s: float | None
    exposed_median_s: float | None
    overlap: Overlap
    load_imbalance: float | None
    peak_memory_bytes: int | None
    denoise_s: float | None
    ranks: list[RankSummary]
    notes: list[str] = field(default_factory=list)
    baseline: str | None = None
    speedup_step: float | None = None
    speedup_denoise: float | None = None
    step_clock: str = "host"  # whose step times: gpu, host or mixed (RunTrace.step_clock)

    @property
    def overlap_efficiency(self) -> float | None:
        return self.overlap.efficiency

    @property
    def exposed_share(self) -> float | None:
        """Exposed communication / wall time, both summed over ranks and counted steps."""
        wall = sum(r.wall_total_s for r in self.ranks)
        return sum(r.exposed_total_s for r in self.ranks) / wall if wall > 0 else None

    @property
    def kinds(self) -> list[str]:
        """Traffic kinds seen on any rank, gather last."""
        seen = sorted({k for r in self.ranks for k in r.traffic})
        return [k for k in seen if k not in PER_IMAGE_KINDS] + [
            k for k in seen if k in PER_IMAGE_KINDS
        ]

    def per_step(self, kind: str) -> KindBytes:
        """Bytes per step of ``kind`` summed over ranks (gather: per image)."""
        parts = [r.per_step(kind) for r in self.ranks]
        return KindBytes(sum(p.sent for p in parts), sum(p.received for p in parts))

    @property
    def sent_per_step(self) -> int:
        return sum(r.sent_per_step for r in self.ranks)

    @property
    def received_per_step(self) -> int:
        return sum(r.received_per_step for r in self.ranks)


def _first_key(keys: list[tuple[int, int]]) -> tuple[int, int] | None:
    return min(keys) if keys else None


def _counted_mask(
    steps: np.ndarray, first: tuple[int, int] | None, include_first: bool
) -> np.ndarray:
    keys = step_keys(steps)
    return np.array([include_first or key != first for key in keys], dtype=bool)


def _traffic_totals(trace: RankTrace) -> tuple[dict[str, KindBytes], int, int]:
    """Totals by kind, the number of denoising steps they spread over, and images."""
    table = trace.traffic
    totals: dict[str, KindBytes] = {}
    for kind in sorted(set(table["kind"].tolist())):
        rows = table[table["kind"] == kind]
        totals[kind] = KindBytes(int(rows["sent"].sum()), int(rows["received"].sum()))
    images = {int(i) for i in trace.steps["image"]} | {int(i) for i in table["image"]}
    if len(trace.steps):
        steps = len(trace.steps)
    else:  # tracing off: steps implied by the traffic table (last step of each image)
        step_rows = table[~np.isin(table["kind"], PER_IMAGE_KINDS)]
        steps = 0
        for image in sorted({int(i) for i in step_rows["image"]}):
            steps += int(step_rows["step"][step_rows["image"] == image].max()) + 1
    return totals, steps, len(images)


def _phase_total(trace: RankTrace, name: str) -> float | None:
    rows = trace.phases[trace.phases["name"] == name]
    if not len(rows):
        return None
    return float((rows["t_end"] - rows["t_start"]).sum())


def summarize_rank(
    trace: RankTrace, *, include_first: bool = False, first: tuple[int, int] | None = None
) -> RankSummary:
    """The figures of one rank. ``first`` is the run's first step (default: this rank's)."""
    steps = trace.steps
    keys = step_keys(steps)
    first = first if first is not None else _first_key(keys)
    mask = _counted_mask(steps, first, include_first)
    counted = steps[mask]
    first_rows = steps[[key == first for key in keys]] if len(steps) else steps
    counted_keys = set(step_keys(counted))
    exchanges = group_exchanges(trace.exchanges)
    in_counted = np.array(
        [
            (int(i), int(s)) in counted_keys
            for i, s in zip(exchanges.image, exchanges.waited_in_step, strict=True)
        ],
        dtype=bool,
    )
    by_kind = {}
    for kind in sorted(set(counted["kind"].tolist())):
        value = median(counted["wall"][counted["kind"] == kind])
        if value is not None:
            by_kind[kind] = value
    traffic, traffic_steps, images = _traffic_totals(trace)
    return RankSummary(
        rank=trace.rank,
        band_index=trace.band_index,
        cfg_index=trace.cfg_index,
        host=trace.host,
        device=trace.device,
        status=trace.status,
        steps_recorded=len(steps),
        steps_counted=len(counted),
        first_step_s=float(first_rows["wall"][0]) if len(first_rows) else None,
        step_median_s=median(counted["wall"]),
        step_p95_s=percentile(counted["wall"], 95),
        step_mean_s=float(counted["wall"].mean()) if len(counted) else None,
        wall_total_s=float(counted["wall"].sum()),
        compute_median_s=median(counted["compute"]),
        compute_total_s=float(counted["compute"].sum()),
        exposed_median_s=median(counted["exposed_comm"]),
        exposed_total_s=float(counted["exposed_comm"].sum()),
        overlap=overlap(exchanges.select(in_counted)),
        pending_exchanges=exchanges.pending,
        by_kind=by_kind,
        traffic=traffic,
        traffic_steps=traffic_steps,
        images=images,
        peak_memory_bytes=trace.peak_memory_bytes,
        denoise_s=_phase_total(trace, "denoise"),
    )


def _common_keys(run: RunTrace) -> set[tuple[int, int]]:
    traced = [r for r in run.ranks if len(r.steps)]
    if not traced:
        return set()
    common = set(step_keys(traced[0].steps))
    for trace in traced[1:]:
        common &= set(step_keys(trace.steps))
    return common


def summarize_run(run: RunTrace, *, include_first: bool = False) -> RunSummary:
    """The figures of a run and of each of its ranks (see the module docstring)."""
    all_keys = [key for r in run.ranks for key in step_keys(r.steps)]
    first = _first_key(all_keys)
    ranks = [summarize_rank(t, include_first=include_first, first=first) for t in run.ranks]
    common = _common_keys(run)
    counted = sorted(k for k in common if include_first or k != first)
    slowest: list[float] = []
    compute_totals: list[float] = []
    traced = [t for t in run.ranks if len(t.steps)]
    if counted and traced:
        walls = []
        for trace in traced:
            index = {key: i for i, key in enumerate(step_keys(trace.steps))}
            rows = trace.steps[[index[k] for k in counted]]
            walls.append(rows["wall"])
            compute_totals.append(float(rows["compute"].sum()))
        slowest = list(np.max(np.vstack(walls), axis=0))
    mean_compute = float(np.mean(compute_totals)) if compute_totals else 0.0
    firsts = [r.first_step_s for r in ranks if r.first_step_s is not None]
    peaks = [r.peak_memory_bytes for r in ranks if r.peak_memory_bytes is not None]
    denoise = [r.denoise_s for r in ranks if r.denoise_s is not None]
    compute_medians = [r.compute_median_s for r in ranks if r.compute_median_s is not None]
    exposed_medians = [r.exposed_median_s for r in ranks if r.exposed_median_s is not None]
    pooled = Overlap(0.0, 0.0, 0)
    for rank in ranks:
        pooled = pooled + rank.overlap
    notes = run.notes()
    if common and len(common) < max(r.steps_recorded for r in ranks):
        notes.append(f"run-level step figures use the {len(common)} steps every rank finished")
    return RunSummary(
        path=str(run.directory),
        mode=run.mode,
        status=run.status,
        n_ranks=run.n_ranks,
        n_bands=run.n_bands,
        cfg_groups=run.cfg_groups,
        include_first=include_first,
        expected_steps=run.expected_steps,
        steps_common=len(common),
        steps_counted=len(counted),
        first_step_s=max(firsts) if firsts else None,
        step_median_s=median(slowest),
        step_p95_s=percentile(slowest, 95),
        compute_median_s=float(np.mean(compute_medians)) if compute_medians else None,
        exposed_median_s=float(np.mean(exposed_medians)) if exposed_medians else None,
        overlap=pooled,
        load_imbalance=max(compute_totals) / mean_compute if mean_compute > 0 else None,
        peak_memory_bytes=max(peaks) if peaks else None,
        denoise_s=max(denoise) if denoise else None,
        ranks=ranks,
        notes=notes,
        step_clock=run.step_clock,
    )


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def with_baseline(summary: RunSummary, baseline: RunSummary) -> RunSummary:
    """``summary`` with its speed-ups against ``baseline`` (baseline time / this time)."""
    return replace(
        summary,
        baseline=baseline.path,
        speedup_step=_ratio(baseline.step_median_s, summary.step_median_s),
        speedup_denoise=_ratio(baseline.denoise_s, summary.denoise_s),
    )


def baseline_notes(baseline: RunTrace, runs: list[RunTrace]) -> list[str]:
    """Warnings when the baseline is not a ``single`` run or generates something else."""
    notes = []
    if baseline.mode != "single":
        notes.append(f"baseline {baseline.directory} is a '{baseline.mode}' run, not 'single'")

    def generation(run: RunTrace) -> tuple:
        config = run.meta.config.get("generation", {}) if run.meta is not None else {}
        if not isinstance(config, dict):
            return ()
        return tuple(config.get(k) for k in ("height", "width", "steps"))

    reference = generation(baseline)
    for run in runs:
        other = generation(run)
        if reference and other and other != reference:
            notes.append(
                f"{run.directory} generates (height, width, steps) = {other}, "
                f"the baseline {reference}: speed-ups compare different work"
            )
    return notes
