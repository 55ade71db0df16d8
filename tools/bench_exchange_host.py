#!/usr/bin/env python3
"""Host (CPU) cost of one exchange round: ``post`` then ``wait``, on one rank talking to itself.

In a ``sync`` step every one of ~160 exchanges sits between two CUDA graphs: the GPU waits while
the host starts MPI, completes it and launches the next graph, so the Python overhead of an
exchange is on the critical path there. This measures it on tiny CPU buffers over
``MPI.COMM_SELF`` (no partner to wait for), for a neighbour (halo) exchange and a statistics
allreduce, with tracing on and off, against the bare mpi4py calls the exchange makes.

Usage: ``python tools/bench_exchange_host.py [--rounds N]``; prints microseconds per round
(median of 5 runs of N rounds). Exit status: 0.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import mpi4py

mpi4py.rc.thread_level = "multiple"
import torch  # noqa: E402
from mpi4py import MPI  # noqa: E402

from pcpp_mpi.comm.capture import StepRecorder  # noqa: E402
from pcpp_mpi.comm.deferred import DeferredStarts  # noqa: E402
from pcpp_mpi.comm.exchanges import NeighbourExchange, StatsAllreduce, WireSpec  # noqa: E402
from pcpp_mpi.comm.traffic import TrafficCounter  # noqa: E402
from pcpp_mpi.trace.recorder import Tracer  # noqa: E402

CPU = torch.device("cpu")


def _per_round_us(
    rounds: int, one_round: Callable[[int], None], reset: Callable[[], None]
) -> float:
    times = []
    for run in range(6):  # the first run warms up
        start = time.perf_counter()
        for step in range(run * rounds, (run + 1) * rounds):
            one_round(step)
        times.append((time.perf_counter() - start) / rounds * 1e6)
        reset()
    return statistics.median(times[1:])


def _exchange_rounds(tracer: Tracer) -> tuple[Callable[[int], None], Callable[[int], None]]:
    """One round of a halo exchange and one of a statistics allreduce, on MPI.COMM_SELF."""
    common = {
        "comm": MPI.COMM_SELF,
        "wire": WireSpec(CPU, CPU, torch.float32),
        "counter": TrafficCounter(),
        "tracer": tracer,
        "deferred": DeferredStarts(),
        "recorder": StepRecorder(),
    }
    halo = NeighbourExchange(
        name="halo", kind="halo", up=0, down=None, tag=3,
        send_shapes=((2, 4, 1, 8), None), recv_shapes=((2, 4, 1, 8), None), **common,
    )  # fmt: skip
    stats = StatsAllreduce(name="norm", kind="norm", shape=(3, 2, 32), **common)
    rows = torch.randn(2, 4, 1, 8)
    sums = torch.randn(3, 2, 32, dtype=torch.float64)

    def halo_round(step: int) -> None:
        halo.post(step, rows, None)
        halo.wait(step)

    def stats_round(step: int) -> None:
        stats.post(step, sums)
        stats.wait(step)

    return halo_round, stats_round


def measure(rounds: int) -> dict[str, float]:
    """Microseconds per round, by case."""
    results: dict[str, float] = {}
    for tracing in (False, True):
        tracer = Tracer(enabled=tracing)
        halo_round, stats_round = _exchange_rounds(tracer)
        label = "traced" if tracing else "untraced"
        results[f"halo exchange, {label}"] = _per_round_us(rounds, halo_round, tracer.take_finished)
        results[f"stats allreduce, {label}"] = _per_round_us(
            rounds, stats_round, tracer.take_finished
        )
    send, recv = torch.randn(64).numpy(), torch.empty(64).numpy()

    def bare_round(step: int) -> None:
        requests = [
            MPI.COMM_SELF.Irecv([recv, MPI.FLOAT], source=0, tag=5),
            MPI.COMM_SELF.Isend([send, MPI.FLOAT], dest=0, tag=5),
        ]
        MPI.Request.Waitall(requests)

    results["bare mpi4py Irecv + Isend + Waitall"] = _per_round_us(rounds, bare_round, lambda: None)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3000)
    args = parser.parse_args()
    for case, us in measure(args.rounds).items():
        print(f"{case:40s} {us:7.1f} us per round")
    return 0


if __name__ == "__main__":
    sys.exit(main())
