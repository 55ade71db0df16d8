"""Reading a run directory for analysis: the run file's metadata and every rank's trace.

Files are opened read-only *without* HDF5 file locking, so a job that is still running (and
holds its files open for writing) can be analysed too; every rank file is flushed after each
step, so what is read is every step finished so far. Schema versions are checked with
:func:`pcpp_mpi.output.run_file.check_schema_version`: an unknown version raises
:class:`~pcpp_mpi.output.errors.SchemaError` (never read "best effort").

No MPI, no torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import h5py
import numpy as np
import yaml

from pcpp_mpi.output.errors import OutputError
from pcpp_mpi.output.rank_file import TABLES
from pcpp_mpi.output.run_file import check_schema_version, plain_value, read_provenance

RUN_FILE_NAME = "run.h5"
_RANK_FILE_RE = re.compile(r"^rank-(\d+)\.h5$")

#: What each status means for the data a reader sees (said by every tool).
STATUS_NOTES: MappingProxyType[str, str] = MappingProxyType(
    {
        "complete": "",
        "running": (
            "the job is still running, or it was killed (SIGKILL, node failure, time limit) "
            "before it could record a final status: only the steps finished so far are here"
        ),
        "interrupted": "the job was stopped by a signal: only the steps finished before are here",
        "failed": "the job failed: only the steps finished before the failure are here",
    }
)


def open_h5(path: str | Path) -> h5py.File:
    """Open ``path`` read-only without file locking, after checking its schema version.

    Raises :class:`OutputError` if it cannot be opened, :class:`SchemaError` if its schema
    version is unknown.
    """
    path = Path(path)
    try:
        file = h5py.File(path, "r", locking=False)
    except (OSError, ValueError) as exc:
        raise OutputError(f"cannot open {path}: {exc}") from exc
    try:
        check_schema_version(file, path)
    except BaseException:
        file.close()
        raise
    return file


def decode_table(table: np.ndarray) -> np.ndarray:
    """A copy of a structured array with HDF5 variable-length strings as fixed ``str``."""
    names = table.dtype.names or ()
    columns: dict[str, np.ndarray] = {}
    fields: list[tuple[str, Any]] = []
    for name in names:
        column = table[name]
        if table.dtype[name].kind in "OS":
            values = [v.decode() if isinstance(v, bytes) else str(v) for v in column]
            width = max((len(v) for v in values), default=1)
            column = np.array(values, dtype=f"U{max(width, 1)}")
        columns[name] = column
        fields.append((name, column.dtype))
    out = np.empty(len(table), dtype=fields)
    for name in names:
        out[name] = columns[name]
    return out


def empty_table(name: str) -> np.ndarray:
    """An empty table of the rank-file layout ``name``, strings as ``str``."""
    return decode_table(np.empty(0, dtype=TABLES[name]))


@dataclass(frozen=True)
class RankTrace:
    """One rank file read into memory. Times are seconds since the rank's epoch.

    ``steps`` is the ``/steps`` table with, for every step that has a row in ``/gpu_steps``
    (GPU runs), the GPU's ``t_start``, ``t_end`` and ``wall`` in place of the host's, and
    ``compute = max(wall - exposed_comm, 0)``; ``host_steps`` is ``/steps`` as written (what
    the host measured) and ``gpu_step_count`` how many steps got GPU times. Every tool reads
    ``steps``.
    """

    path: Path
    attrs: dict[str, Any]
    steps: np.ndarray
    exchanges: np.ndarray
    phases: np.ndarray
    traffic: np.ndarray
    gpu_steps: np.ndarray
    host_steps: np.ndarray
    gpu_step_count: int

    @property
    def rank(self) -> int:
        return int(self.attrs.get("rank", -1))

    @property
    def status(self) -> str:
        return str(self.attrs.get("status", "unknown"))

    @property
    def mode(self) -> str:
        return str(self.attrs.get("mode", "unknown"))

    @property
    def band_index(self) -> int:
        return int(self.attrs.get("band_index", -1))

    @property
    def cfg_index(self) -> int:
        return int(self.attrs.get("cfg_index", 0))

    @property
    def host(self) -> str:
        return str(self.attrs.get("host", "?"))

    @property
    def device(self) -> str:
        return str(self.attrs.get("device", "?"))

    @property
    def tracing(self) -> bool:
        return bool(self.attrs.get("tracing", True))

    @property
    def epoch_unix(self) -> float | None:
        value = self.attrs.get("epoch_unix")
        return None if value is None else float(value)

    @property
    def peak_memory_bytes(self) -> int | None:
        """Peak device memory (GPU: max allocated; CPU: max RSS); None until the rank ends."""
        value = self.attrs.get("peak_memory_bytes")
        return None if value is None else int(value)


def with_gpu_times(steps: np.ndarray, gpu_steps: np.ndarray) -> tuple[np.ndarray, int]:
    """A copy of the ``/steps`` rows ``steps`` where each step (same image and step) that has
    a ``/gpu_steps`` row takes its GPU ``t_start``, ``t_end`` and ``wall``, and ``compute``
    becomes ``max(wall - exposed_comm, 0)``; also how many steps were replaced."""
    out = steps.copy()
    gpu = {
        (int(i), int(s)): row
        for i, s, row in zip(gpu_steps["image"], gpu_steps["step"], gpu_steps, strict=True)
        if np.isfinite(row["wall"])
    }
    replaced = 0
    for index, (image, step) in enumerate(zip(out["image"], out["step"], strict=True)):
        row = gpu.get((int(image), int(step)))
        if row is None:
            continue
        out["t_start"][index], out["t_end"][index] = row["t_start"], row["t_end"]
        out["wall"][index] = row["wall"]
        out["compute"][index] = max(float(row["wall"]) - float(out["exposed_comm"][index]), 0.0)
        replaced += 1
    return out, replaced


def read_rank_trace(path: str | Path, *, gpu_times: bool = True) -> RankTrace:
    """Read one rank file (attributes and tables; missing tables read as empty). With
    ``gpu_times`` (the default) ``steps`` carries the GPU step times where there are any;
    without, the host's."""
    path = Path(path)
    with open_h5(path) as file:
        attrs = {key: plain_value(value) for key, value in file.attrs.items()}
        tables = {}
        for name in TABLES:
            tables[name] = decode_table(file[name][()]) if name in file else empty_table(name)
    host_steps = tables["steps"]
    replaced = 0
    if gpu_times:
        tables["steps"], replaced = with_gpu_times(host_steps, tables["gpu_steps"])
    return RankTrace(
        path=path, attrs=attrs, host_steps=host_steps, gpu_step_count=replaced, **tables
    )


@dataclass(frozen=True)
class RunMeta:
    """The run file's metadata (not its images): status, configuration, provenance."""

    path: Path
    status: str
    error: str | None
    n_ranks: int | None
    created: str | None
    finished: str | None
    config_yaml: str
    provenance: dict[str, Any]
    rank_files: list[str]
    image_names: list[str]

    @property
    def config(self) -> dict[str, Any]:
        """The resolved configuration as a dict ({} if it cannot be parsed)."""
        try:
            loaded = yaml.safe_load(self.config_yaml) if self.config_yaml else {}
        except yaml.YAMLError:
            return {}
        return loaded if isinstance(loaded, dict) else {}


def _index_key(name: str) -> tuple[int, str]:
    match = re.search(r"-(\d+)$", name)
    return (int(match.group(1)) if match else -1, name)


def read_run_meta(path: str | Path) -> RunMeta:
    """Read ``run.h5``'s attributes, configuration, provenance, rank links and image names."""
    path = Path(path)
    with open_h5(path) as file:
        attrs = {key: plain_value(value) for key, value in file.attrs.items()}
        rank_files = []
        if "ranks" in file:
            for name in sorted(file["ranks"].keys(), key=_index_key):
                link = file["ranks"].get(name, getlink=True)
                if isinstance(link, h5py.ExternalLink):
                    rank_files.append(link.filename)
        images = sorted(file["images"].keys(), key=_index_key) if "images" in file else []
        config = file["config"].asstr()[()] if "config" in file else ""
        provenance = read_provenance(file["provenance"]) if "provenance" in file else {}
    error = attrs.get("error")
    n_ranks = attrs.get("n_ranks")
    return RunMeta(
        path=path,
        status=str(attrs.get("status", "unknown")),
        error=str(error) if error else None,
        n_ranks=int(n_ranks) if n_ranks is not None else None,
        created=attrs.get("created"),
        finished=attrs.get("finished"),
        config_yaml=config,
        provenance=provenance,
        rank_files=rank_files,
        image_names=images,
    )


def read_images(path: str | Path) -> dict[str, np.ndarray]:
    """Every ``/images/image-NNNN`` of a run file, (H, W, 3) uint8, in index order."""
    with open_h5(path) as file:
        if "images" not in file:
            return {}
        group = file["images"]
        return {name: group[name][()] for name in sorted(group.keys(), key=_index_key)}


def read_latents(path: str | Path) -> dict[str, np.ndarray]:
    """Every ``/latents/latent-NNNN`` of a run file, (C, h, w) float32, in index order."""
    with open_h5(path) as file:
        if "latents" not in file:
            return {}
        group = file["latents"]
        return {name: group[name][()] for name in sorted(group.keys(), key=_index_key)}


def resolve_run_file(path: str | Path) -> Path:
    """``DIR/run.h5`` for a run directory, the path itself for a file."""
    path = Path(path)
    if path.is_dir():
        return path / RUN_FILE_NAME
    return path


@dataclass(frozen=True)
class RunTrace:
    """A run directory read for analysis: run metadata (if the run file exists) and traces."""

    directory: Path
    meta: RunMeta | None
    ranks: list[RankTrace]
    missing_ranks: list[int] = field(default_factory=list)

    @property
    def status(self) -> str:
        """The run file's status; without a run file, the ranks' common status (or 'mixed')."""
        if self.meta is not None:
            return self.meta.status
        statuses = {r.status for r in self.ranks}
        return statuses.pop() if len(statuses) == 1 else "mixed"

    @property
    def n_ranks(self) -> int:
        if self.meta is not None and self.meta.n_ranks is not None:
            return self.meta.n_ranks
        sizes = [int(r.attrs.get("n_ranks", 0)) for r in self.ranks]
        return max(sizes, default=len(self.ranks))

    @property
    def mode(self) -> str:
        modes = {r.mode for r in self.ranks}
        if len(modes) == 1:
            return modes.pop()
        if self.meta is not None and "mode" in self.meta.provenance:
            return str(self.meta.provenance["mode"])
        return "unknown"

    @property
    def cfg_groups(self) -> int:
        return max(r.cfg_index for r in self.ranks) + 1

    @property
    def n_bands(self) -> int:
        """Bands per CFG group: from the provenance's band list, else from the ranks."""
        if self.meta is not None and isinstance(self.meta.provenance.get("bands"), list):
            return max(len(self.meta.provenance["bands"]), 1)
        return max(self.n_ranks // self.cfg_groups, 1)

    def world_rank(self, trace: RankTrace, peer: int, kind: str) -> int | None:
        """The world rank of an exchange row's ``peer`` (None for collectives, ``-1``).

        ``peer`` is a rank of the patch communicator of the row's CFG group (world rank
        ``cfg_index * n_bands + peer``), except for the CFG swap (kind ``cfg``), whose peer is
        a rank of the pair communicator, i.e. a CFG index (world ``peer * n_bands + band``),
        and the parallel VAE decode (kinds ``decode``, ``image``), whose peer is a decode
        position (``band * cfg_groups + cfg_index``).
        """
        if peer < 0:
            return None
        if kind == "cfg":
            return peer * self.n_bands + trace.band_index
        if kind in ("decode", "image"):
            return (peer % self.cfg_groups) * self.n_bands + peer // self.cfg_groups
        return trace.cfg_index * self.n_bands + peer

    @property
    def expected_steps(self) -> int | None:
        """Denoising steps per image times images, from the resolved configuration."""
        if self.meta is None:
            return None
        generation = self.meta.config.get("generation", {})
        if not isinstance(generation, dict):
            return None
        steps = generation.get("steps")
        prompts = generation.get("prompts") or [None]
        return int(steps) * len(prompts) if isinstance(steps, int) else None

    @property
    def complete(self) -> bool:
        return self.status == "complete" and not self.missing_ranks

    @property
    def step_clock(self) -> str:
        """Whose step times ``steps`` holds: ``gpu`` (every traced step has a GPU time),
        ``host`` (none has: CPU runs, older files) or ``mixed``."""
        traced = [r for r in self.ranks if len(r.steps)]
        with_gpu = sum(r.gpu_step_count for r in traced)
        if with_gpu == 0:
            return "host"
        return "gpu" if with_gpu == sum(len(r.steps) for r in traced) else "mixed"

    def _step_clock_notes(self) -> list[str]:
        clock = self.step_clock
        if clock == "host":
            return []
        notes = ["step times are GPU times (CUDA events on the compute stream); "
                 "exposed communication is what the host waited"]  # fmt: skip
        for rank in self.ranks:
            missing = len(rank.steps) - rank.gpu_step_count
            if missing:
                notes.append(
                    f"rank {rank.rank}: {missing} step(s) without a GPU time use host times"
                )
        return notes

    def notes(self) -> list[str]:
        """Plain-language warnings about the state of the run (empty for a clean run)."""
        notes = []
        status = self.status
        if status != "complete":
            meaning = STATUS_NOTES.get(status, "the run did not finish normally")
            notes.append(f"run status is '{status}': {meaning}")
        if self.meta is not None and self.meta.error:
            notes.append(f"recorded error: {self.meta.error}")
        if self.meta is None:
            notes.append(
                f"no {RUN_FILE_NAME} in {self.directory}: rank files read on their own "
                "(no configuration, provenance or images)"
            )
        if self.missing_ranks:
            listed = ", ".join(str(r) for r in self.missing_ranks)
            notes.append(f"rank files missing for rank(s) {listed}")
        for rank in self.ranks:
            if rank.status not in ("complete", status):
                notes.append(f"rank {rank.rank} status is '{rank.status}'")
            if rank.attrs.get("error"):
                notes.append(f"rank {rank.rank} error: {rank.attrs['error']}")
            if not rank.tracing:
                notes.append(
                    f"rank {rank.rank} ran with runtime.trace=false: no timings, bytes only"
                )
        notes.extend(self._step_clock_notes())
        counts = {r.rank: len(r.steps) for r in self.ranks if r.tracing}
        expected = self.expected_steps
        if counts:
            low, high = min(counts.values()), max(counts.values())
            if expected is not None and low < expected:
                notes.append(f"steps recorded per rank: {low}..{high} of {expected} expected")
            elif low != high:
                notes.append(f"ranks recorded different step counts: {low}..{high}")
        return notes


def _rank_file_paths(directory: Path, meta: RunMeta | None) -> dict[int, Path]:
    if meta is not None and meta.rank_files:
        return {rank: directory / name for rank, name in enumerate(meta.rank_files)}
    found = {}
    for path in directory.iterdir():
        match = _RANK_FILE_RE.match(path.name)
        if match:
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def load_run(path: str | Path) -> RunTrace:
    """Read a run for analysis: ``path`` is a run directory, its ``run.h5`` or a rank file.

    Works on runs that are complete, failed, interrupted, still running or killed: a missing
    run file or rank file is noted, not fatal, as long as one rank file is there. Raises
    :class:`OutputError` (nothing readable) or :class:`SchemaError` (unknown schema version).
    """
    path = Path(path)
    if not path.exists():
        raise OutputError(
            f"{path} does not exist (expected a run directory or its {RUN_FILE_NAME})"
        )
    directory = path if path.is_dir() else path.parent
    # a rank file stands for its whole run directory
    run_file = (
        directory / RUN_FILE_NAME if _RANK_FILE_RE.match(path.name) else resolve_run_file(path)
    )
    meta = read_run_meta(run_file) if run_file.exists() else None
    paths = _rank_file_paths(directory, meta)
    ranks, missing = [], []
    for rank, rank_path in paths.items():
        if rank_path.exists():
            ranks.append(read_rank_trace(rank_path))
        else:
            missing.append(rank)
    if meta is not None and meta.n_ranks is not None:
        missing.extend(r for r in range(meta.n_ranks) if r not in paths)
    if not ranks:
        raise OutputError(
            f"no rank files (rank-NNNN.h5) in {directory}: nothing to analyse"
            + (f" (run status '{meta.status}')" if meta is not None else "")
        )
    return RunTrace(directory=directory, meta=meta, ranks=ranks, missing_ranks=sorted(missing))
