"""GPU kernel summaries of a profiled image (pcpp_mpi.analysis.kernels), on synthetic traces."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile, record_function

from pcpp_mpi.analysis.kernels import (
    Interval,
    bucket_gaps,
    busy_time,
    category,
    idle_gaps,
    profile_from_events,
    summarize_kernels,
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64>>", "attention"),
        ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16", "attention"),
        ("sm90_xmma_fprop_implicit_gemm_f16f16_f16f32_f32_nhwckrsc_nhwc", "convolution"),
        ("nvjet_hsh_128x256_64x4_2x1_v_bz_coopB_NNT", "gemm"),
        ("at::native::RowwiseMomentsCUDAKernel<c10::Half>", "normalisation"),
        ("Memcpy DtoD (Device -> Device)", "copy"),
        ("at::native::vectorized_elementwise_kernel<4, AddFunctor>", "elementwise"),
        ("some_custom_kernel", "other"),
    ],
)  # fmt: skip
def test_kernel_names_map_to_categories(name: str, expected: str) -> None:
    assert category(name) == expected


def test_busy_time_counts_overlaps_once() -> None:
    intervals = [Interval("a", 0, 10), Interval("b", 5, 15), Interval("c", 20, 30)]
    assert busy_time(intervals) == 25
    assert busy_time([]) == 0


def test_summary_keeps_the_window_and_clips_to_it() -> None:
    kernels = [
        Interval("before", 0, 50),  # started before the window: left out
        Interval("gemm_a", 100, 140),
        Interval("gemm_a", 150, 190),
        Interval("flash_fwd", 200, 260),
        Interval("copy_tail", 390, 420),  # clipped at the window's end
        Interval("after", 500, 510),
    ]
    summary = summarize_kernels(kernels, (100, 400), steps=2)
    assert summary.kernels == 4
    assert summary.busy_us == 40 + 40 + 60 + 10
    assert summary.idle_us == 300 - 150
    assert summary.by_category_us == {"gemm": 80, "attention": 60, "copy": 10}
    assert summary.top[0] == ("gemm_a", 80, 2)
    # every gap is charged to the kernel that ends it: 10 us before the second GEMM, 10 before
    # the attention, 130 before the copy (the window ends busy, so nothing is left over)
    assert summary.idle_before_us == {"gemm": 10, "attention": 10, "copy": 130}
    assert sum(summary.idle_before_us.values()) == summary.idle_us
    assert summary.idle_before_top[0] == ("copy_tail", 130, 1)
    assert summary.longest_gaps[0] == (160, 130, "copy_tail")  # from 260 to 390
    figures = summary.to_dict()
    assert figures["busy_ms_per_step"] == pytest.approx(150e-3 / 2)
    assert figures["idle_share"] == pytest.approx(0.5)
    assert figures["idle_before_ms_per_step"]["copy"] == pytest.approx(65e-3)
    assert figures["by_category_ms_per_step"]["attention"] == pytest.approx(30e-3)
    # idle gaps 140-150, 190-200 (short) and 260-390 (one long wait): together the idle time
    assert summary.gaps == [(2, 20.0), (1, 130.0), (0, 0.0), (0, 0.0)]
    assert [g["bucket"] for g in figures["idle_gaps"]] == [
        "0-20us",
        "20-200us",
        "200-2000us",
        ">=2000us",
    ]
    assert figures["idle_gaps"][1]["per_step"] == 0.5
    assert figures["idle_gaps"][1]["ms_per_step"] == pytest.approx(65e-3)


def test_idle_gaps_include_the_window_edges_and_skip_overlaps() -> None:
    stretches = [(10.0, 30.0), (25.0, 40.0), (2040.0, 2050.0)]
    gaps = idle_gaps(stretches, (0.0, 2300.0))
    assert gaps == [10.0, 2000.0, 250.0]
    assert bucket_gaps(gaps) == [(1, 10.0), (0, 0.0), (1, 250.0), (1, 2000.0)]
    assert idle_gaps([], (5.0, 7.0)) == [2.0]
    assert bucket_gaps([]) == [(0, 0.0)] * 4


def test_the_last_named_range_of_a_real_profiler_trace_is_found() -> None:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            with record_function("denoise range"):
                torch.ones(64, 64) @ torch.ones(64, 64)
    events = list(prof.events())
    ranges = sorted(e.time_range.start for e in events if e.name == "denoise range")
    summary = profile_from_events(events, "denoise range", steps=1)
    assert summary is not None and len(ranges) == 2
    assert summary.window_us > 0 and summary.kernels == 0  # no CUDA kernels on the CPU
    assert profile_from_events(events, "no such range", steps=1) is None
