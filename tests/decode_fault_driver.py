"""A job whose VAE decoder fails on one rank in the middle of the parallel decode (tests only):
``mpirun -np N python tests/decode_fault_driver.py JOB.yaml OUT RANK [KEY=VALUE ...]``.

The model is loaded here and handed to :func:`pcpp_mpi.engine.runner.run_job`; on rank
``RANK`` a forward pre-hook on the decoder's second up block raises, while the other ranks are
inside the decode (waiting for that rank's halo rows).
"""

from __future__ import annotations

import sys

import mpi4py

mpi4py.rc.thread_level = "multiple"
import torch  # noqa: E402
from mpi4py import MPI  # noqa: E402

from pcpp_mpi.comm.context import RankComm  # noqa: E402
from pcpp_mpi.config import load_job  # noqa: E402
from pcpp_mpi.engine.runner import run_job  # noqa: E402
from pcpp_mpi.logs import setup_logging  # noqa: E402
from pcpp_mpi.models import load_model  # noqa: E402

FAULT = "injected decode fault"


def fail(*_: object) -> None:
    raise RuntimeError(FAULT)


def main(job_path: str, out: str, rank: str, *overrides: str) -> int:
    world = MPI.COMM_WORLD
    setup_logging(world.Get_rank(), world.Get_size())
    job = load_job(job_path, list(overrides))
    bundle = load_model(job.model, torch.float32, torch.device("cpu"))
    if world.Get_rank() == int(rank):
        bundle.vae.decoder.up_blocks[1].register_forward_pre_hook(fail)
    comm = RankComm(world, 1)
    run_job(job, comm, out, progress=False, bundle=bundle)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
