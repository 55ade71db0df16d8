"""The Python API: load a job, change its settings, run it and read what it wrote.

For scripts and notebooks. The same script runs on one rank (``python script.py``) and under
a launcher (``mpirun -np 4 python script.py``): :func:`run` is called by every rank together,
like ``pcpp-mpi run``. Everything else here needs neither MPI nor a GPU.

- :func:`load_job`: a job from a YAML file or a dict, with ``--set``-style overrides;
- :func:`with_settings`: a copy of a job with some settings changed (the same ``KEY=VALUE``
  paths as ``--set``, or a dict of them);
- :func:`run`: run a job on this process's MPI world (one rank without a launcher);
- :func:`open_run`: a run directory, and from it the run file, the rank files' traces, the
  summary figures and the images (:class:`RunDirectory`).

Errors: :class:`~pcpp_mpi.config.ConfigError` for a bad job (before anything runs),
:class:`pcpp_mpi.engine.runner.JobError` for a job every rank rejected before loading a model
(ranks, height, output directory, model folder), :class:`pcpp_mpi.engine.stopping.RunInterrupted`
when a stop signal ended the run at a step boundary; any other exception is a failure while
generating (the run file records it).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pcpp_mpi import config

if TYPE_CHECKING:
    import numpy as np

    from pcpp_mpi.analysis import RunSummary, RunTrace
    from pcpp_mpi.config import JobConfig
    from pcpp_mpi.output import RunInfo

#: Settings: ``--set``-style ``"KEY=VALUE"`` strings, or a mapping of ``KEY`` to a value.
Settings = Sequence[str] | Mapping[str, Any]
#: ``hook(image, step)``, called by :func:`run` on every rank after each denoising step.
StepHook = Callable[[int, int], None]


def _as_overrides(settings: Settings) -> list[str]:
    """``KEY=VALUE`` strings; a mapping's values are written so they read back unchanged."""
    if isinstance(settings, str):
        return [settings]
    if isinstance(settings, Mapping):
        from pcpp_mpi.sweep import format_override

        return [format_override(key, value) for key, value in settings.items()]
    return list(settings)


def load_job(source: str | Path | Mapping[str, Any], settings: Settings = ()) -> JobConfig:
    """A validated job from a YAML file (path) or from a dict shaped like one.

    ``settings`` change it before validation, as ``pcpp-mpi run --set`` does: a list of
    ``"generation.steps=8"`` strings, or ``{"generation.steps": 8}``. Raises
    :class:`~pcpp_mpi.config.ConfigError` with a message naming the bad key.
    """
    overrides = _as_overrides(settings)
    if isinstance(source, Mapping):
        return config.job_from_dict(source, overrides)
    return config.load_job(source, overrides)


def with_settings(job: JobConfig, settings: Settings) -> JobConfig:
    """A copy of ``job`` with ``settings`` changed (the same paths as ``--set``); validated."""
    return config.job_from_dict(config.job_to_dict(job), _as_overrides(settings))


def run(
    job: JobConfig,
    out: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = False,
    after_step: Sequence[StepHook] = (),
) -> RunDirectory:
    """Run ``job`` into the run directory ``out``; every rank of the MPI world calls it.

    Without a launcher the world is this one process (the job runs in mode ``single``
    whatever its ``parallel.mode``). MPI is started here, with ``MPI_THREAD_MULTIPLE``
    requested, unless ``mpi4py.MPI`` was already imported. ``overwrite`` replaces the files an
    earlier run wrote in ``out``; ``progress`` shows a progress bar on rank 0. ``after_step``:
    callables ``hook(image, step)`` each rank calls in order after every denoising step, once
    the step is in its rank file; an exception raised there fails the run like any other (with
    several ranks the whole job ends and ``run.h5`` records ``failed``). Returns on every rank
    once every rank has closed its files.
    """
    world = _mpi_world()
    from pcpp_mpi.comm.context import RankComm
    from pcpp_mpi.comm.mpi_info import cuda_aware
    from pcpp_mpi.engine.runner import run_job
    from pcpp_mpi.plan.topology import cfg_group_count

    size = world.Get_size()
    cfg_groups = cfg_group_count(job.parallel.cfg_parallel, size)
    comm = RankComm(world, cfg_groups, cuda_aware=bool(cuda_aware()))
    result = run_job(job, comm, out, overwrite=overwrite, progress=progress, after_step=after_step)
    world.Barrier()
    return RunDirectory(result.run_file.parent, rank=world.Get_rank())


def open_run(path: str | Path) -> RunDirectory:
    """A run directory written by ``pcpp-mpi run`` or :func:`run` (also while it runs)."""
    path = Path(path)
    return RunDirectory(path.parent if path.is_file() else path)


@dataclass(frozen=True)
class RunDirectory:
    """A run directory: ``run.h5``, one ``rank-NNNN.h5`` per rank, PNG copies of the images.

    ``rank`` is this process's rank when :func:`run` returned it (0 otherwise): read and print
    on rank 0 only when a script runs under a launcher. Each method reads the files afresh.
    """

    path: Path
    rank: int = 0

    @property
    def run_file(self) -> Path:
        return self.path / "run.h5"

    @property
    def status(self) -> str:
        """``complete``, ``failed``, ``interrupted``, or ``running`` (also after a kill)."""
        return self.info().status

    def info(self) -> RunInfo:
        """The run file read into memory: status, configuration, provenance, images, latents."""
        from pcpp_mpi.output import read_run

        return read_run(self.run_file)

    def job(self) -> JobConfig:
        """The job as the run recorded it (after its overrides)."""
        import yaml

        return config.job_from_dict(yaml.safe_load(self.info().config_yaml))

    def trace(self) -> RunTrace:
        """The run file's metadata and every rank file's tables (steps, exchanges, traffic)."""
        from pcpp_mpi.analysis import load_run

        return load_run(self.path)

    def summary(self, *, include_first: bool = False) -> RunSummary:
        """The figures of ``pcpp-mpi summary`` (definitions: docs/TOOLS.md)."""
        from pcpp_mpi.analysis import summarize_run

        return summarize_run(self.trace(), include_first=include_first)

    def images(self) -> dict[str, np.ndarray]:
        """Every finished image by name (``image-0000`` ...), (H, W, 3) uint8."""
        from pcpp_mpi.analysis.files import read_images

        return read_images(self.run_file)


def _mpi_world() -> Any:
    """``MPI.COMM_WORLD``, initialising MPI with MPI_THREAD_MULTIPLE unless it already is."""
    import mpi4py

    if "mpi4py.MPI" not in sys.modules:
        mpi4py.rc.thread_level = "multiple"
    from mpi4py import MPI

    return MPI.COMM_WORLD
