"""What one extra CUDA-graph node costs next to small kernels (one GPU).

Four graphs of 400 small kernels each (an in-place add on a (2, 320, 32, 128) float16 band,
about the size of a 1024 px SDXL activation), captured with, after every kernel, nothing; an
external event record (what every post of an exchange adds to a captured step); a 1.5 KB copy
to pinned host memory; a 1.5 KB copy from pinned host memory (what GroupNorm statistics cost
per norm with one all-reduce per norm). Each graph is replayed 20 times after 3; the script
prints microseconds per kernel for each. Run on the GPU machine: python3 bench_nodes.py
"""

from __future__ import annotations

import torch

KERNELS = 400


def timed(graph: torch.cuda.CUDAGraph, replays: int = 20) -> float:
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / replays / KERNELS


def main() -> None:
    band = torch.randn(2, 320, 32, 128, device="cuda", dtype=torch.float16)
    stats = torch.randn(3, 2, 32, device="cuda", dtype=torch.float64)
    host = torch.empty(3, 2, 32, dtype=torch.float64, pin_memory=True)
    events = [torch.cuda.Event(external=True) for _ in range(KERNELS)]

    def nothing(i: int) -> None:
        pass

    def event(i: int) -> None:
        events[i].record()

    def to_host(i: int) -> None:
        host.copy_(stats, non_blocking=True)

    def from_host(i: int) -> None:
        stats.copy_(host, non_blocking=True)

    stream = torch.cuda.Stream()
    results = {}
    for name, extra in (
        ("kernel", nothing),
        ("kernel + event record", event),
        ("kernel + 1.5 KB DtoH", to_host),
        ("kernel + 1.5 KB HtoD", from_host),
    ):
        with torch.cuda.stream(stream):
            for i in range(3):  # warm up outside the capture
                band.add_(1.0)
                extra(i)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            for i in range(KERNELS):
                band.add_(1.0)
                extra(i)
        results[name] = timed(graph)
    base = results["kernel"]
    for name, us in results.items():
        print(f"{name:28s} {us:7.2f} us per kernel  (+{us - base:5.2f})")


if __name__ == "__main__":
    main()
