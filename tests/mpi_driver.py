"""Run several jobs in one MPI launch (tests only): ``mpirun -np N python mpi_driver.py SPEC``.

``SPEC`` is a JSON file: ``{"base": JOB.yaml, "out": DIR, "runs": {name: [KEY=VALUE, ...]}}``.
Each run goes through :func:`pcpp_mpi.engine.runner.run_job`, the same path as
``pcpp-mpi run``, into ``DIR/name``; launching MPI once saves the start-up cost per run.
"""

from __future__ import annotations

import json
import sys

import mpi4py

mpi4py.rc.thread_level = "multiple"
from mpi4py import MPI  # noqa: E402

from pcpp_mpi.comm.context import RankComm  # noqa: E402
from pcpp_mpi.config import load_job  # noqa: E402
from pcpp_mpi.engine.runner import run_job  # noqa: E402
from pcpp_mpi.logs import setup_logging  # noqa: E402


def main(spec_path: str) -> int:
    with open(spec_path) as f:
        spec = json.load(f)
    world = MPI.COMM_WORLD
    setup_logging(world.Get_rank(), world.Get_size())
    for name, overrides in spec["runs"].items():
        job = load_job(spec["base"], overrides)
        size = world.Get_size()
        groups = 2 if job.parallel.cfg_parallel and size % 2 == 0 else 1
        comm = RankComm(world, groups)
        run_job(job, comm, f"{spec['out']}/{name}", progress=False)
        comm.free()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
