"""Test-wide settings and fixtures.

Triton kernels (``runtime.norm_kernels: triton``) run in Triton's interpreter on CPU tensors:
``TRITON_INTERPRET`` must be set before a kernel is defined, i.e. before
:mod:`pcpp_mpi.parallel.norm_kernels` or ``tools/research/copy_kernels.py`` is first
imported. The interpreter keeps global state while a kernel runs: never run interpreted
kernels from several threads.
"""

import importlib
import importlib.util
import os
from collections.abc import Callable
from types import ModuleType

import pytest

os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def triton_module() -> Callable[[str], ModuleType]:
    """Imports a module of Triton kernels for the interpreter; skips the test when Triton is
    missing (fails instead under CI=true, where the kernel tests must run)."""

    def load(name: str) -> ModuleType:
        if importlib.util.find_spec("triton") is None:
            message = "Triton is not installed (tools/setup.sh installs it for its interpreter)"
            if os.environ.get("CI") == "true":
                pytest.fail(f"{message}; CI=true: the Triton kernel tests must run, not skip")
            pytest.skip(message)
        if os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("TRITON_INTERPRET=1 is not set: the kernels need a GPU")
        return importlib.import_module(name)

    return load
