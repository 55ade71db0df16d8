"""Where a rank's GPU time goes during one image's denoising, from a ``torch.profiler`` trace.

The runner names each image's denoising with a profiler range (``DENOISE_RANGE``); the kernels
that ran inside the last such range are summed by category (attention, GEMM, convolution, ...)
and their union gives the time the GPU was busy. Wall time minus busy time is the time the GPU
sat idle: waiting for the network, for the host to launch work, or at graph boundaries. The
idle time is also split by the length of each gap between busy stretches (:data:`GAP_BUCKETS_US`):
many gaps of a few microseconds are launch overhead inside a graph, a few gaps of a millisecond
are the GPU waiting for data or for the host. Pure functions over plain intervals, so they can
be tested without a GPU.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

# Checked in order: a cuDNN convolution kernel is often named "..._fprop_implicit_gemm_...".
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("attention", ("flash", "fmha", "attention", "sdpa", "mha")),
    ("convolution", ("conv", "fprop", "dgrad", "wgrad", "winograd")),
    ("gemm", ("gemm", "nvjet", "cublas", "cutlass", "matmul", "xmma")),
    ("normalisation", ("groupnorm", "group_norm", "layer_norm", "layernorm", "moments")),
    ("copy", ("memcpy", "memset", "copy", "cat", "index", "gather", "scatter")),
    ("elementwise", ("elementwise", "vectorized", "reduce", "softmax", "unrolled")),
)


def category(kernel_name: str) -> str:
    """The category of a kernel, from its name ("other" when none matches)."""
    name = kernel_name.lower()
    for label, needles in CATEGORIES:
        if any(needle in name for needle in needles):
            return label
    return "other"


# Lower bounds of the idle-gap buckets, microseconds: [0, 20), [20, 200), [200, 2000), >= 2000.
GAP_BUCKETS_US: tuple[float, ...] = (0.0, 20.0, 200.0, 2000.0)


def gap_bucket_label(index: int) -> str:
    low = GAP_BUCKETS_US[index]
    if index + 1 < len(GAP_BUCKETS_US):
        return f"{low:g}-{GAP_BUCKETS_US[index + 1]:g}us"
    return f">={low:g}us"


@dataclass(frozen=True)
class Interval:
    """One kernel (or range) on the profiler's clock, in microseconds."""

    name: str
    start: float
    end: float


@dataclass
class KernelProfile:
    """GPU time of one rank over one window (per step: divide by ``steps``)."""

    window_us: float
    busy_us: float
    kernels: int
    steps: int
    by_category_us: dict[str, float] = field(default_factory=dict)
    top: list[tuple[str, float, int]] = field(default_factory=list)  # (name, us, count)
    gaps: list[tuple[int, float]] = field(default_factory=list)  # per bucket: (count, us)
    # idle time just before the kernels of each category / name (what the GPU was waiting to
    # start): the gap edges a graph's launch overhead, copies or events add show up here
    idle_before_us: dict[str, float] = field(default_factory=dict)
    idle_before_top: list[tuple[str, float, int]] = field(default_factory=list)
    # the longest gaps: (start from the window's start, length, the kernel that ends it)
    longest_gaps: list[tuple[float, float, str]] = field(default_factory=list)

    @property
    def idle_us(self) -> float:
        return max(self.window_us - self.busy_us, 0.0)

    def to_dict(self) -> dict:
        per_step = 1e-3 / max(self.steps, 1)
        return {
            "steps": self.steps,
            "kernels": self.kernels,
            "window_ms_per_step": self.window_us * per_step,
            "busy_ms_per_step": self.busy_us * per_step,
            "idle_ms_per_step": self.idle_us * per_step,
            "idle_share": self.idle_us / self.window_us if self.window_us else 0.0,
            "by_category_ms_per_step": {
                k: v * per_step for k, v in sorted(self.by_category_us.items())
            },
            "idle_gaps": [
                {
                    "bucket": gap_bucket_label(i),
                    "per_step": count / max(self.steps, 1),
                    "ms_per_step": us * per_step,
                }
                for i, (count, us) in enumerate(self.gaps)
            ],
            "top_kernels": [
                {"name": name, "ms_per_step": us * per_step, "count": count}
                for name, us, count in self.top
            ],
            "idle_before_ms_per_step": {
                k: v * per_step for k, v in sorted(self.idle_before_us.items())
            },
            "idle_before_top_kernels": [
                {"name": name, "ms_per_step": us * per_step, "count": count}
                for name, us, count in self.idle_before_top
            ],
            "longest_gaps": [
                {"at_us": at, "us": gap, "before": name} for at, gap, name in self.longest_gaps
            ],
        }


def busy_stretches(intervals: Iterable[Interval]) -> list[tuple[float, float]]:
    """The union of ``intervals`` as sorted, disjoint ``(start, end)`` stretches."""
    stretches: list[tuple[float, float]] = []
    for item in sorted(intervals, key=lambda i: i.start):
        if stretches and item.start <= stretches[-1][1]:
            start, end = stretches[-1]
            stretches[-1] = (start, max(end, item.end))
        else:
            stretches.append((item.start, item.end))
    return stretches


def busy_time(intervals: Iterable[Interval]) -> float:
    """Length of the union of ``intervals`` (overlapping kernels count once)."""
    return sum(end - start for start, end in busy_stretches(intervals))


def idle_gaps(stretches: Sequence[tuple[float, float]], window: tuple[float, float]) -> list[float]:
    """Lengths of the idle gaps of ``window`` around the busy ``stretches`` (sorted, disjoint,
    inside the window), including the gaps at its start and end."""
    gaps = []
    cursor = window[0]
    for start, end in stretches:
        if start > cursor:
            gaps.append(start - cursor)
        cursor = max(cursor, end)
    if window[1] > cursor:
        gaps.append(window[1] - cursor)
    return gaps


def idle_before(
    kernels: Iterable[Interval], window: tuple[float, float]
) -> list[tuple[Interval, float]]:
    """Every idle gap inside ``window`` with the kernel that ends it (the first to start after
    it), in time order; the idle tail of the window, which no kernel ends, is left out."""
    ended = []
    cursor = window[0]
    for kernel in sorted(kernels, key=lambda k: k.start):
        if kernel.start > cursor:
            ended.append((kernel, kernel.start - cursor))
        cursor = max(cursor, kernel.end)
    return ended


def bucket_gaps(gaps: Iterable[float]) -> list[tuple[int, float]]:
    """``(count, total length)`` of ``gaps`` per bucket of :data:`GAP_BUCKETS_US`."""
    buckets = [(0, 0.0) for _ in GAP_BUCKETS_US]
    for gap in gaps:
        index = max(i for i, low in enumerate(GAP_BUCKETS_US) if gap >= low)
        count, total = buckets[index]
        buckets[index] = (count + 1, total + gap)
    return buckets


def summarize_kernels(
    kernels: Sequence[Interval], window: tuple[float, float], steps: int, top: int = 15
) -> KernelProfile:
    """Kernels that started inside ``window`` (clipped to it), by category and name."""
    start, end = window
    inside = [
        Interval(k.name, max(k.start, start), min(k.end, end))
        for k in kernels
        if start <= k.start < end
    ]
    by_category: dict[str, float] = {}
    by_name: dict[str, list[float]] = {}
    for k in inside:
        duration = k.end - k.start
        label = category(k.name)
        by_category[label] = by_category.get(label, 0.0) + duration
        by_name.setdefault(k.name, []).append(duration)
    ranked = sorted(by_name.items(), key=lambda item: -sum(item[1]))[:top]
    stretches = busy_stretches(inside)
    before_category: dict[str, float] = {}
    before_name: dict[str, list[float]] = {}
    gaps_with_kernels = idle_before(inside, window)
    longest = sorted(gaps_with_kernels, key=lambda item: -item[1])[:top]
    for kernel, gap in gaps_with_kernels:
        label = category(kernel.name)
        before_category[label] = before_category.get(label, 0.0) + gap
        before_name.setdefault(kernel.name, []).append(gap)
    ranked_before = sorted(before_name.items(), key=lambda item: -sum(item[1]))[:top]
    return KernelProfile(
        window_us=end - start,
        busy_us=sum(e - s for s, e in stretches),
        kernels=len(inside),
        steps=steps,
        by_category_us=by_category,
        top=[(name, sum(durations), len(durations)) for name, durations in ranked],
        gaps=bucket_gaps(idle_gaps(stretches, window)),
        idle_before_us=before_category,
        idle_before_top=[(name, sum(gaps), len(gaps)) for name, gaps in ranked_before],
        longest_gaps=[(k.start - gap - start, gap, k.name) for k, gap in longest],
    )


def profile_from_events(
    events: Iterable, range_name: str, steps: int, top: int = 15
) -> KernelProfile | None:
    """:func:`summarize_kernels` over the last ``range_name`` range of ``torch.profiler``
    events (``prof.events()``); None when the trace holds no such range."""
    from torch.autograd import DeviceType

    ranges: list[Interval] = []
    kernels: list[Interval] = []
    for event in events:
        interval = Interval(event.name, event.time_range.start, event.time_range.end)
        if event.name == range_name:
            if event.device_type == DeviceType.CPU:
                ranges.append(interval)
        elif event.device_type == DeviceType.CUDA:
            kernels.append(interval)
    if not ranges:
        return None
    last = max(ranges, key=lambda r: r.start)
    return summarize_kernels(kernels, (last.start, last.end), steps, top)
