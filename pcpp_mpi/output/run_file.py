"""The run file ``DIR/run.h5``: images, latents, configuration, provenance, status.

Layout (schema version :data:`pcpp_mpi.SCHEMA_VERSION`)::

    /                       attrs: schema_version, status, created, n_ranks,
                                   finished and error (once a final status is set)
    /config                 the resolved configuration, YAML text (string dataset)
    /provenance             group; one attribute per key, nested values as JSON strings
    /ranks/rank-0000 ...    external links to the rank files' root groups
    /images/image-0000 ...  (H, W, 3) uint8; attrs: prompt, seed
    /latents/latent-0000 .. (C, h, w) float32, the final latent before decoding

It is written by rank 0 only.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NamedTuple, Self, get_args

import h5py
import numpy as np

from pcpp_mpi import SCHEMA_VERSION
from pcpp_mpi.output.errors import OutputError, SchemaError
from pcpp_mpi.output.images import check_image

#: Schema versions the readers in this package understand.
SUPPORTED_SCHEMA_VERSIONS: tuple[int, ...] = (SCHEMA_VERSION,)

FinalStatus = Literal["complete", "failed", "interrupted"]
FINAL_STATUSES: tuple[str, ...] = get_args(FinalStatus)

#: Provenance attribute listing the keys whose values are stored as JSON text.
_JSON_KEYS_ATTR = "_json_keys"
_INDEX_RE = re.compile(r"-(\d+)$")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _name_index(name: str) -> int:
    match = _INDEX_RE.search(name)
    return int(match.group(1)) if match else -1


def plain_value(value: Any) -> Any:
    """Convert numpy scalars and arrays read from HDF5 attributes to Python values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value


def _is_scalar(value: object) -> bool:
    return isinstance(value, (str, bool, int, float, np.generic)) and not isinstance(value, np.void)


def check_schema_version(file: h5py.File | h5py.Group, path: str | Path | None = None) -> int:
    """Return the file's schema version; raise :class:`SchemaError` if it is not supported."""
    where = path if path is not None else file.file.filename
    supported = ", ".join(str(v) for v in SUPPORTED_SCHEMA_VERSIONS)
    if "schema_version" not in file.attrs:
        raise SchemaError(
            f"{where} has no schema_version attribute: not a file written by pcpp-mpi "
            f"(this version reads schema versions {supported})"
        )
    raw = plain_value(file.attrs["schema_version"])
    try:
        version = int(raw)
    except (TypeError, ValueError):
        version = None
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        hint = ""
        if version is not None and version > max(SUPPORTED_SCHEMA_VERSIONS):
            hint = "; it was written by a newer pcpp-mpi, upgrade to read it"
        raise SchemaError(
            f"{where} has schema version {raw!r}, but this version of pcpp-mpi reads only "
            f"schema versions {supported}{hint}"
        )
    return version


class RunImage(NamedTuple):
    """One image read back from a run file."""

    name: str
    array: np.ndarray
    prompt: str
    seed: int


@dataclass(frozen=True)
class RunInfo:
    """Everything a run file holds, read into memory."""

    path: Path
    schema_version: int
    status: str
    error: str | None
    created: str | None
    finished: str | None
    n_ranks: int | None
    config_yaml: str
    provenance: dict[str, Any]
    rank_files: list[str] = field(default_factory=list)
    images: list[RunImage] = field(default_factory=list)
    latents: dict[str, np.ndarray] = field(default_factory=dict)


class RunFile:
    """Writer for ``DIR/run.h5``; use :meth:`create` and close it (or use it as a context).

    Leaving the context with an exception while the status is still ``running`` marks the
    run ``interrupted`` (KeyboardInterrupt) or ``failed`` (anything else).
    """

    def __init__(self, file: h5py.File) -> None:
        self._file = file
        self.path = Path(file.filename)
        self._write_error: str | None = None

    @classmethod
    def create(
        cls,
        path: str | Path,
        *,
        config_yaml: str,
        provenance: Mapping[str, object],
        n_ranks: int,
        rank_files: Sequence[str | os.PathLike[str]],
    ) -> RunFile:
        """Create a new run file (refusing to replace an existing one) with status 'running'.

        ``rank_files`` are the rank files' names, linked relative to the run file's directory;
        they need not exist yet.
        """
        path = Path(path)
        if n_ranks < 1:
            raise ValueError(f"n_ranks must be at least 1, got {n_ranks}")
        if len(rank_files) != n_ranks:
            raise ValueError(f"expected {n_ranks} rank file names, got {len(rank_files)}")
        links = [cls._link_target(path, name) for name in rank_files]
        try:
            file = h5py.File(path, "w-", locking=False)
        except FileExistsError as exc:
            raise OutputError(f"run file {path} already exists; it is not overwritten") from exc
        except OSError as exc:
            raise OutputError(f"cannot create run file {path}: {_describe(exc)}") from exc
        try:
            file.attrs["schema_version"] = int(SCHEMA_VERSION)
            file.attrs["status"] = "running"
            file.attrs["created"] = _now()
            file.attrs["n_ranks"] = int(n_ranks)
            file.create_dataset("config", data=config_yaml, dtype=h5py.string_dtype())
            _write_provenance(file.create_group("provenance"), provenance)
            ranks = file.create_group("ranks")
            for rank, target in enumerate(links):
                ranks[f"rank-{rank:04d}"] = h5py.ExternalLink(target, "/")
            file.create_group("images")
            file.create_group("latents")
            file.flush()
        except BaseException as exc:
            file.close()
            with contextlib.suppress(OSError):
                path.unlink()  # we created it: leave no half-written run file behind
            if isinstance(exc, (OSError, RuntimeError)):
                raise OutputError(f"cannot write run file {path}: {_describe(exc)}") from exc
            raise
        return cls(file)

    @staticmethod
    def _link_target(run_path: Path, name: str | os.PathLike[str]) -> str:
        target = Path(name)
        if target.is_absolute():
            target = Path(os.path.relpath(target, run_path.absolute().parent))
        return target.as_posix()

    # -- writing ---------------------------------------------------------------------------

    def _require_open(self) -> h5py.File:
        if not self._file.id.valid:
            raise OutputError(f"run file {self.path} is closed")
        return self._file

    def _write(self, what: str, action: Any) -> None:
        """Run ``action`` (which writes and flushes), turning failures into OutputError."""
        try:
            action()
        except (OSError, RuntimeError, ValueError, KeyError) as exc:
            if isinstance(exc, OutputError):
                raise
            message = f"cannot write {what} to run file {self.path}: {_describe(exc)}"
            self._write_error = message
            raise OutputError(message) from exc

    def add_image(self, index: int, image: np.ndarray, prompt: str, seed: int) -> str:
        """Write ``/images/image-NNNN`` with attributes prompt and seed, and flush."""
        array = check_image(image)
        file = self._require_open()
        name = f"image-{index:04d}"
        if name in file["images"]:
            raise OutputError(f"run file {self.path} already holds {name}")

        def write() -> None:
            dataset = file["images"].create_dataset(name, data=array)
            dataset.attrs["prompt"] = str(prompt)
            dataset.attrs["seed"] = int(seed)
            # HDF5 image conventions, so generic viewers show it as a picture.
            dataset.attrs["CLASS"] = np.bytes_("IMAGE")
            dataset.attrs["IMAGE_SUBCLASS"] = np.bytes_("IMAGE_TRUECOLOR")
            dataset.attrs["INTERLACE_MODE"] = np.bytes_("INTERLACE_PIXEL")
            file.flush()

        self._write(f"image {name}", write)
        return name

    def add_latent(self, index: int, latent: np.ndarray) -> str:
        """Write the final latent ``/latents/latent-NNNN`` as (C, h, w) float32, and flush."""
        array = np.asarray(latent)
        if array.ndim != 3 or not np.issubdtype(array.dtype, np.floating):
            raise ValueError(
                f"a latent must be a (C, h, w) float array, got shape {array.shape} "
                f"and dtype {array.dtype}"
            )
        array = np.ascontiguousarray(array, dtype=np.float32)
        file = self._require_open()
        name = f"latent-{index:04d}"
        if name in file["latents"]:
            raise OutputError(f"run file {self.path} already holds {name}")

        def write() -> None:
            file["latents"].create_dataset(name, data=array)
            file.flush()

        self._write(f"latent {name}", write)
        return name

    @property
    def status(self) -> str:
        """The status currently recorded in the file."""
        return str(plain_value(self._require_open().attrs["status"]))

    def set_status(self, status: FinalStatus, error: str | None = None) -> None:
        """Record the final status (with ``error`` and the finish time) and flush.

        Everything written before is flushed first, so a file never says ``complete``
        while its images are missing; ``complete`` is refused after a failed write.
        Raises :class:`OutputError` when the status cannot be written (e.g. disk full).
        """
        if status not in FINAL_STATUSES:
            raise ValueError(f"status must be one of {FINAL_STATUSES}, got {status!r}")
        file = self._require_open()
        if status == "complete" and self._write_error is not None:
            raise OutputError(
                f"refusing to mark run file {self.path} complete after a failed write "
                f"({self._write_error}); mark it 'failed' instead"
            )
        try:
            file.flush()  # the data first: a status must never describe unwritten data
        except (OSError, RuntimeError) as exc:
            self._write_error = f"flush failed: {_describe(exc)}"
            raise OutputError(
                f"cannot write status {status!r} to run file {self.path}: flushing its data "
                f"failed ({_describe(exc)}; is the disk full?)"
            ) from exc
        try:
            if error is None:
                if "error" in file.attrs:
                    del file.attrs["error"]
            else:
                file.attrs["error"] = str(error)
            file.attrs["finished"] = _now()
            file.attrs["status"] = status
            file.flush()
        except (OSError, RuntimeError) as exc:
            raise OutputError(
                f"cannot write status {status!r} to run file {self.path}: {_describe(exc)} "
                "(is the disk full?)"
            ) from exc

    # -- life cycle --------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether the underlying HDF5 file is closed."""
        return not self._file.id.valid

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._file.id.valid:
            self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc is not None and not self.closed and self.status == "running":
                status: FinalStatus = (
                    "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
                )
                with contextlib.suppress(OutputError):  # keep the original exception
                    self.set_status(status, error=f"{type(exc).__name__}: {exc}")
        finally:
            self.close()


def _write_provenance(group: h5py.Group, provenance: Mapping[str, object]) -> None:
    json_keys: list[str] = []
    for key, value in provenance.items():
        if not isinstance(key, str):
            raise TypeError(f"provenance keys must be strings, got {key!r}")
        if key == _JSON_KEYS_ATTR:
            raise ValueError(f"provenance key {key!r} is reserved")
        if _is_scalar(value):
            group.attrs[key] = value
        else:
            group.attrs[key] = json.dumps(value, sort_keys=True, default=str)
            json_keys.append(key)
    group.attrs[_JSON_KEYS_ATTR] = json.dumps(json_keys)


def read_provenance(group: h5py.Group) -> dict[str, Any]:
    """The ``/provenance`` attributes as plain values (JSON-encoded ones decoded)."""
    json_keys = set(json.loads(plain_value(group.attrs.get(_JSON_KEYS_ATTR, "[]"))))
    result: dict[str, Any] = {}
    for key, value in group.attrs.items():
        if key == _JSON_KEYS_ATTR:
            continue
        value = plain_value(value)
        result[key] = json.loads(value) if key in json_keys else value
    return result


def open_run_file(path: str | Path) -> h5py.File:
    """Open a run file read-only after checking its schema version."""
    path = Path(path)
    try:
        file = h5py.File(path, "r", locking=False)
    except OSError as exc:
        raise OutputError(f"cannot open run file {path}: {_describe(exc)}") from exc
    try:
        check_schema_version(file, path)
    except BaseException:
        file.close()
        raise
    return file


def _sorted_names(group: h5py.Group | None) -> list[str]:
    if group is None:
        return []
    return sorted(group.keys(), key=lambda name: (_name_index(name), name))


def read_run(path: str | Path) -> RunInfo:
    """Read a whole run file (images and latents included) into a :class:`RunInfo`."""
    path = Path(path)
    with open_run_file(path) as file:
        attrs = file.attrs
        error = plain_value(attrs.get("error"))
        n_ranks = plain_value(attrs.get("n_ranks"))
        images = []
        image_group = file.get("images")
        for name in _sorted_names(image_group):
            dataset = image_group[name]
            images.append(
                RunImage(
                    name=name,
                    array=dataset[()],
                    prompt=str(plain_value(dataset.attrs.get("prompt", ""))),
                    seed=int(plain_value(dataset.attrs.get("seed", -1))),
                )
            )
        latent_group = file.get("latents")
        latents = {name: latent_group[name][()] for name in _sorted_names(latent_group)}
        rank_files = []
        rank_group = file.get("ranks")
        for name in _sorted_names(rank_group):
            link = rank_group.get(name, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                rank_files.append(link.filename)
        config = file["config"].asstr()[()] if "config" in file else ""
        provenance = read_provenance(file["provenance"]) if "provenance" in file else {}
        return RunInfo(
            path=path,
            schema_version=int(plain_value(attrs["schema_version"])),
            status=str(plain_value(attrs.get("status", "unknown"))),
            error=str(error) if error else None,
            created=plain_value(attrs.get("created")),
            finished=plain_value(attrs.get("finished")),
            n_ranks=int(n_ranks) if n_ranks is not None else None,
            config_yaml=config,
            provenance=provenance,
            rank_files=rank_files,
            images=images,
            latents=latents,
        )
