"""Run a job with a fault injected (tests only), through the Python API:

    mpirun -np N python tests/fault_job.py JOB --out DIR --fail-at RANK:STEP [--set KEY=VALUE]...

Rank ``RANK`` raises ``RuntimeError("injected fault at step STEP")`` from an ``after_step`` hook
of :func:`pcpp_mpi.api.run`, once step ``STEP`` of an image is recorded in its rank file; the
other ranks run on. The production step loop reads no switch for it.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from pcpp_mpi import api


@dataclass(frozen=True)
class FailAt:
    """An ``after_step`` hook that raises on rank ``rank`` after step ``step``."""

    rank: int
    step: int

    def __call__(self, image: int, step: int) -> None:
        from mpi4py import MPI  # started by api.run before the first step

        if step == self.step and MPI.COMM_WORLD.Get_rank() == self.rank:
            raise RuntimeError(f"injected fault at step {step} of image {image}")


def parse_fault(value: str) -> FailAt:
    rank, _, step = value.partition(":")
    return FailAt(int(rank), int(step))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fault_job.py")
    parser.add_argument("job")
    parser.add_argument("--out", required=True)
    parser.add_argument("--fail-at", type=parse_fault, required=True, metavar="RANK:STEP")
    parser.add_argument("--set", dest="settings", action="append", default=[])
    args = parser.parse_args(argv)
    job = api.load_job(args.job, args.settings)
    api.run(job, args.out, after_step=[args.fail_at])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
