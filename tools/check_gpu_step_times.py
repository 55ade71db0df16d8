#!/usr/bin/env python3
"""On a GPU: do the recorded GPU step times add up to the denoising time (within 2 %)?

Runs a job on one GPU (``pcpp-mpi run`` in one process, mode ``single``) and checks, for every
rank of the run, that the sum of its ``/gpu_steps`` times matches the sum of its ``denoise``
phases within ``--tolerance``; prints both numbers and their ratio, and exits 1 if any rank is
off (or has steps without a GPU time), 0 otherwise::

    python tools/check_gpu_step_times.py --out runs/gpu-times
    python tools/check_gpu_step_times.py --job jobs/sdxl-1024.yaml --steps 50 --out runs/gt
    python tools/check_gpu_step_times.py --run runs/pcpp-4     # an existing run, any size

``--run`` checks a run that exists already (several ranks too) without running anything.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from pcpp_mpi.analysis.gpu_times import check_step_times, format_check


def _run_job(args: argparse.Namespace) -> int:
    command = [
        sys.executable, "-m", "pcpp_mpi.cli", "run", args.job, "--out", args.out,
        "--overwrite", "--no-progress", "--set", "runtime.device=cuda",
        "--set", f"generation.steps={args.steps}", "--set", "parallel.mode=single",
    ]  # fmt: skip
    print("running:", " ".join(command), flush=True)
    return subprocess.run(command, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", default="jobs/sdxl-1024.yaml", help="job to run on the GPU")
    parser.add_argument("--steps", type=int, default=30, help="denoising steps")
    parser.add_argument("--out", default="runs/gpu-step-times", help="run directory")
    parser.add_argument("--run", help="check this existing run instead of running one")
    parser.add_argument("--tolerance", type=float, default=0.02, help="allowed |ratio - 1|")
    args = parser.parse_args(argv)
    run = args.run
    if run is None:
        code = _run_job(args)
        if code != 0:
            print(f"the run failed (exit {code})", file=sys.stderr)
            return 2
        run = args.out
    checks = check_step_times(Path(run), args.tolerance)
    for check in checks:
        print(format_check(check))
    return 0 if checks and all(c.ok for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
