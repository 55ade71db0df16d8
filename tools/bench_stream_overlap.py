#!/usr/bin/env python3
"""Does a CUDA-aware MPI transfer progress while the rank's GPU computes? Per compute stream.

Two ranks (one GPU each, or sharing one) exchange one device buffer (``--mb`` MB each way)
with ``Isend``/``Irecv`` right after queuing ``--busy-ms`` of matrix products on the compute
stream, then time how long the transfer took to complete (host time from the posts to the end of
``Waitall``) and how long the GPU work took. This is repeated for the two settings of
``runtime.compute_stream``:

- ``default``: the work runs on the CUDA legacy default stream. Open MPI copies device
  messages on blocking streams of its own, which wait for the default stream's queued work:
  the transfer should finish only after the products (transfer ~ busy + copy).
- ``own``: the work runs on a non-blocking stream (``pcpp_mpi.engine.streams``): the transfer
  should overlap with it (transfer ~ copy alone).

Each setting is also measured without GPU work (the copy alone). Launch with the CUDA-aware
MPI (``tools/device/env.sh``)::

    $MPIRUN_GPU_STR -np 2 python3 tools/bench_stream_overlap.py --out overlap.json

Prints a table (medians of ``--reps``; rank 0's view); writes every repetition as JSON. Exit
status: 0 measured, 2 without a CUDA device or with other than 2 ranks.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import mpi4py

mpi4py.rc.thread_level = "multiple"
import torch  # noqa: E402
from mpi4py import MPI  # noqa: E402

from pcpp_mpi.comm.exchanges import mpi_buffer  # noqa: E402
from pcpp_mpi.comm.mpi_info import cuda_aware  # noqa: E402
from pcpp_mpi.engine.streams import compute_stream  # noqa: E402


def _busy(a: torch.Tensor, products: int) -> None:
    """Queue ``products`` matrix products on the current stream (results discarded)."""
    for _ in range(products):
        torch.mm(a, a)


def _products_for(ms: float, a: torch.Tensor) -> int:
    """How many products of ``a`` take about ``ms`` on this GPU."""
    _busy(a, 3)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    _busy(a, 10)
    end.record()
    end.synchronize()
    return max(1, round(ms / (start.elapsed_time(end) / 10)))


def _one_round(world, send, recv, a, products: int) -> dict[str, float]:
    """Queue the products, post the exchange at once, time transfer and GPU work."""
    peer = 1 - world.Get_rank()
    torch.cuda.synchronize()
    world.Barrier()
    began = time.perf_counter()
    done = torch.cuda.Event()
    _busy(a, products)
    done.record()
    requests = [
        world.Irecv(mpi_buffer(recv), source=peer, tag=7),
        world.Isend(mpi_buffer(send), dest=peer, tag=7),
    ]
    MPI.Request.Waitall(requests)
    transfer = time.perf_counter() - began
    done.synchronize()
    gpu = time.perf_counter() - began
    return {"transfer_ms": transfer * 1e3, "gpu_ms": gpu * 1e3}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=256.0, help="MB sent each way")
    parser.add_argument("--busy-ms", type=float, default=100.0, help="GPU work queued first")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    world = MPI.COMM_WORLD
    if not torch.cuda.is_available():
        print("bench_stream_overlap: no CUDA device: it times device transfers", file=sys.stderr)
        return 2
    if world.Get_size() != 2:
        print("bench_stream_overlap: run with exactly 2 ranks", file=sys.stderr)
        return 2
    rank = world.Get_rank()
    device = torch.device("cuda", rank % torch.cuda.device_count())
    torch.cuda.set_device(device)
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    for choice in ("default", "own"):
        with compute_stream(device, choice):
            n = int(args.mb * 2**20) // 2
            send = torch.full((n,), float(rank + 1), dtype=torch.float16, device=device)
            recv = torch.zeros(n, dtype=torch.float16, device=device)
            a = torch.randn(8192, 8192, dtype=torch.float16, device=device)
            products = _products_for(args.busy_ms, a)
            results[choice] = {"busy": [], "idle": []}
            for _ in range(args.reps + 1):  # the first round warms MPI's registration caches
                for case, count in (("busy", products), ("idle", 0)):
                    results[choice][case].append(_one_round(world, send, recv, a, count))
            if not bool((recv == float(2 - rank)).all()):
                print(f"rank {rank}: received data is wrong ({choice})", file=sys.stderr)
                world.Abort(1)
            del send, recv, a
    if rank == 0:
        table = {
            choice: {
                case: {k: statistics.median(r[k] for r in rounds[1:]) for k in rounds[0]}
                for case, rounds in cases.items()
            }
            for choice, cases in results.items()
        }
        report = {
            "device": torch.cuda.get_device_name(device),
            "gpus": torch.cuda.device_count(),
            "cuda_aware": cuda_aware(),
            "mb_each_way": args.mb,
            "busy_ms_asked": args.busy_ms,
            "median": table,
            "rounds": results,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"{args.mb:.0f} MB each way, {report['device']} x{report['gpus']}")
        print("| compute stream | GPU work | transfer done (ms) | GPU work done (ms) |")
        print("|---|---|---|---|")
        for choice, cases in table.items():
            for case, figure in cases.items():
                print(
                    f"| {choice} | {case} | {figure['transfer_ms']:.2f} | {figure['gpu_ms']:.2f} |"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
