"""Test-wide settings.

Triton kernels (``runtime.norm_kernels: triton``) run in Triton's interpreter on CPU tensors:
``TRITON_INTERPRET`` must be set before a kernel is defined, i.e. before
:mod:`pcpp_mpi.parallel.norm_kernels` is first imported.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
