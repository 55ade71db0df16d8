"""Does a torch.profiler session slow down later CUDA-graph replays in the same process?

Times a CUDA graph of many small kernels (about as many as one SDXL band step) before and
after each of several profiler sessions over its replays, the way ``tools/bench.py
--profile`` and ``tools/bench_band_step.py --profile`` profile one case after another in one
process. Writes one JSON object (milliseconds per replay after each session) to ``--out``.
Needs a CUDA device::

    python3 tools/probe_profiler_residue.py --out probe.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def _graph_of_small_kernels(
    kernels: int, device: torch.device
) -> tuple[torch.cuda.CUDAGraph, tuple[torch.Tensor, ...]]:
    """One graph of ``kernels`` element-wise kernels and a few matrix products, and the
    tensors it reads and writes (to be kept alive while it is replayed)."""
    small = torch.zeros(2, 320, 64, 64, device=device, dtype=torch.float16)
    weight = torch.randn(1024, 1024, device=device, dtype=torch.float16)
    activations = torch.randn(4096, 1024, device=device, dtype=torch.float16)
    torch.mm(activations, weight)  # cuBLAS set up before the capture
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream):
        graph.capture_begin()
        for index in range(kernels):
            if index % 50 == 0:
                torch.mm(activations, weight)
            else:
                small.add_(1.0)
        graph.capture_end()
    torch.cuda.current_stream(device).wait_stream(stream)
    return graph, (small, weight, activations)


def _ms_per_replay(graph: torch.cuda.CUDAGraph, replays: int) -> float:
    for _ in range(3):
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / replays


def _profile_session(graph: torch.cuda.CUDAGraph, replays: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            graph.replay()
        torch.cuda.synchronize()
    prof.events()  # the summary the benchmark tools build from the events


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", type=int, default=2300)
    parser.add_argument("--replays", type=int, default=20)
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("probe_profiler_residue: no CUDA device", file=sys.stderr)
        return 2
    if args.out.exists():
        print(f"probe_profiler_residue: {args.out} exists; choose another --out", file=sys.stderr)
        return 2
    device = torch.device("cuda", 0)
    graph, _tensors = _graph_of_small_kernels(args.kernels, device)
    timings = {"before": _ms_per_replay(graph, args.replays)}
    for session in range(1, args.sessions + 1):
        _profile_session(graph, 5)
        timings[f"after session {session}"] = _ms_per_replay(graph, args.replays)
    fresh, _fresh_tensors = _graph_of_small_kernels(args.kernels, device)
    timings["graph captured after the sessions"] = _ms_per_replay(fresh, args.replays)
    result = {"device": torch.cuda.get_device_name(device), "kernels": args.kernels,
              "ms_per_replay": timings}  # fmt: skip
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
