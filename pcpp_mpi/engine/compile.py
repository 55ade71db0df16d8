"""``runtime.compile``: the network call of a step (the UNet's) compiled by ``torch.compile``.

A GPU rank replays each step as CUDA graphs (:mod:`pcpp_mpi.engine.graphs`); compiled, the
kernels inside those graphs are inductor's: normalisations fused with their activations,
residual additions and concatenations fused with their producers, far fewer launches. The
parallel layers take their traced path (:mod:`pcpp_mpi.parallel.exchange_ops`): each exchange
is one custom operator in the compiled graph, so MPI stays outside the graphs as before.

The compiled code depends only on the step's *phase* (``local``, ``fresh``, ``stale``), and a run
compiles the phase its steps are made of (:func:`compiled_phases`). The few ``sync`` warm-up steps
of the displaced modes run uncompiled (the layers' traced path, still replayed as CUDA graphs)
unless ``runtime.compile_warmup`` compiles their ``fresh`` phase too, at about twice the compile
time. :class:`~pcpp_mpi.engine.graphs.StepGraphs` compiles in a dry run of the phase's first step
(the exchanges record instead of calling MPI, as while a step is captured), so no rank compiles
while others wait for it in MPI, and no compilation happens inside a CUDA graph capture. Inductor
keeps what it generated in an on-disk cache (``runtime.compile_cache``): a second job with the same
model, size, band and mode loads it instead of generating it again."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from pcpp_mpi.config.schema import DISPLACED_MODES, RuntimeConfig

CACHE_VARIABLE = "TORCHINDUCTOR_CACHE_DIR"


def compile_enabled(runtime: RuntimeConfig, device: torch.device) -> bool:
    """Whether UNet calls are compiled: ``runtime.compile`` ``auto`` compiles on a GPU only
    (on the CPU inductor needs a C++ compiler and compiling costs more than it saves), and not
    when ``runtime.norm_kernels: triton`` asks for the uncompiled path's GroupNorm kernels."""
    if runtime.compile == "auto":
        return device.type == "cuda" and runtime.norm_kernels != "triton"
    return bool(runtime.compile)


def compiled_phases(mode: str, warmup: bool = False) -> frozenset[str]:
    """The step phases a run of ``mode`` compiles: ``stale`` for the displaced modes (and
    ``fresh``, their warm-up steps', with ``warmup``), ``fresh`` for ``sync``, ``local`` for
    ``single`` and ``naive``."""
    if mode in DISPLACED_MODES:
        return frozenset({"stale", "fresh"} if warmup else {"stale"})
    if mode == "sync":
        return frozenset({"fresh"})
    return frozenset({"local"})


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/pcpp-mpi/torch-compile`` (``~/.cache/...`` by default): in the home
    directory, which on clusters is shared by the nodes and outlives jobs."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pcpp-mpi" / "torch-compile"


def use_cache_dir(setting: str | None) -> Path:
    """Point inductor's on-disk caches (generated code, compiled kernels, Triton's cache) at
    ``runtime.compile_cache`` (or :func:`default_cache_dir`), unless the environment already
    sets ``TORCHINDUCTOR_CACHE_DIR``, which then wins; returns the directory in use."""
    chosen = os.environ.get(CACHE_VARIABLE)
    if not chosen:
        chosen = str(Path(setting).expanduser() if setting else default_cache_dir())
        os.environ[CACHE_VARIABLE] = chosen  # read by inductor when it first compiles
    path = Path(chosen)
    path.mkdir(parents=True, exist_ok=True)
    return path


def compile_network(network: nn.Module, backend: str) -> Callable[..., object]:
    """``network`` (a family's, e.g. the UNet) compiled as one graph per step phase
    (``fullgraph``: a graph break would silently run part of the step eagerly) with static
    shapes (a band's shapes never change within a run). ``backend``: ``inductor``, or
    ``aot_eager`` (traced and checked, no code generated: for tests)."""
    return torch.compile(network, fullgraph=True, dynamic=False, backend=backend)
