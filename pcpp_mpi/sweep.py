"""Sweeps: one base job run at many settings, one point per Slurm array task.

A sweep file (YAML)::

    job: ../jobs/tiny.yaml          # the base job; a relative path is relative to this file
    set:                            # optional: overrides for every point
      generation.steps: 10
    axes:                           # every combination, the last axis varying fastest
      parallel.mode: [distrifusion, pcpp]
      parallel.ratio: [0.3, 0.6]
      ntasks: [2, 4]                # optional: ranks per point (the others are config keys)
    points:                         # optional: single points, after the combinations
      - {parallel.mode: sync, ntasks: 4}

Point ``i`` runs ``pcpp-mpi run JOB --set KEY=VALUE ...`` into ``SWEEP_DIR/point-NNNN``.
``ntasks`` is the one key that is not configuration: every array task gets the same allocation
from ``sbatch --ntasks``, and a point with ``ntasks: k`` launches ``k`` of those ranks (so
submit with ``--ntasks`` = the largest ``k``). Without ``ntasks`` a point uses all of them.

The sweep directory holds ``sweep.json`` (the expanded points, written by the first task that
starts), ``points/point-NNNN.json`` (each point's Slurm ids, start time, exit code and wall time)
and the run directories. :func:`collect` turns it into one table, whatever has finished.

``pcpp-mpi sweep`` (:mod:`pcpp_mpi.commands.sweep`) is the command line: ``list``, ``array``,
``start`` and ``finish`` (what ``slurm/sweep.sbatch`` calls) and ``collect`` (the table).
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import os
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

#: The one sweep key that is not a configuration key: ranks per point.
NTASKS = "ntasks"
SWEEP_JSON = "sweep.json"
POINTS_DIR = "points"
SWEEP_FORMAT = 1
_TOP_KEYS = ("job", "set", "axes", "points")


class SweepError(ValueError):
    """A bad sweep file or sweep directory; the message is for the user."""


@dataclass(frozen=True)
class SweepPoint:
    """One point: its index and the values it sets (``ntasks`` included, in sweep order)."""

    index: int
    settings: dict[str, Any]

    @property
    def ntasks(self) -> int | None:
        value = self.settings.get(NTASKS)
        return None if value is None else int(value)

    @property
    def config_settings(self) -> dict[str, Any]:
        return {k: v for k, v in self.settings.items() if k != NTASKS}


@dataclass(frozen=True)
class Sweep:
    """A loaded sweep file: the base job, the fixed overrides and every point."""

    job: Path
    fixed: dict[str, Any]
    points: list[SweepPoint]
    source: str = ""

    def overrides(self, point: SweepPoint) -> list[str]:
        """The ``--set KEY=VALUE`` arguments of ``point`` (fixed ones first)."""
        merged = {**self.fixed, **point.config_settings}
        return [format_override(k, v) for k, v in merged.items()]

    def point(self, index: int) -> SweepPoint:
        if not 0 <= index < len(self.points):
            raise SweepError(
                f"point {index} does not exist: the sweep has {len(self.points)} points "
                f"(indices 0-{len(self.points) - 1})"
            )
        return self.points[index]

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": SWEEP_FORMAT,
            "job": str(self.job),
            "fixed": self.fixed,
            "points": [{"index": p.index, "settings": p.settings} for p in self.points],
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Sweep:
        if data.get("format") != SWEEP_FORMAT:
            raise SweepError(f"unknown sweep.json format {data.get('format')!r}")
        return cls(
            job=Path(data["job"]),
            fixed=dict(data.get("fixed") or {}),
            points=[SweepPoint(int(p["index"]), dict(p["settings"])) for p in data["points"]],
            source=str(data.get("source", "")),
        )


def format_override(key: str, value: Any) -> str:
    """``KEY=VALUE`` for ``pcpp-mpi run --set``; VALUE reads back (as YAML) as ``value``."""
    if isinstance(value, str):
        plain = "\n" not in value and value == value.strip()
        with contextlib.suppress(yaml.YAMLError):
            if plain and yaml.safe_load(value) == value:
                return f"{key}={value}"
    return f"{key}={json.dumps(value)}"


def _check_key(key: object, where: str) -> str:
    if not isinstance(key, str) or not key or any(c.isspace() or c == "=" for c in key):
        raise SweepError(f"{where}: {key!r} is not a configuration key like parallel.mode")
    return key


def _check_value(key: str, value: Any, where: str) -> Any:
    if key == NTASKS and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise SweepError(f"{where}: ntasks must be a positive integer, got {value!r}")
    return value


def parse_sweep(data: Any, base_dir: Path, source: str = "") -> Sweep:
    """Build a :class:`Sweep` from parsed YAML; relative job paths are under ``base_dir``."""
    if not isinstance(data, dict):
        raise SweepError("a sweep file is a mapping with keys job, set, axes, points")
    unknown = [k for k in data if k not in _TOP_KEYS]
    if unknown:
        raise SweepError(f"unknown sweep key(s) {unknown}; expected {list(_TOP_KEYS)}")
    job = data.get("job")
    if not isinstance(job, str) or not job:
        raise SweepError("job: the base job file (a path) is required")
    job_path = Path(job).expanduser()
    if not job_path.is_absolute():
        job_path = (base_dir / job_path).resolve()
    fixed_raw = data.get("set") or {}
    if not isinstance(fixed_raw, dict):
        raise SweepError("set: must be a mapping of configuration keys to values")
    fixed = {_check_key(k, "set"): _check_value(k, v, "set") for k, v in fixed_raw.items()}
    if NTASKS in fixed:
        raise SweepError("set: ntasks is not a configuration key; put it in axes or points")
    axes_raw = data.get("axes") or {}
    if not isinstance(axes_raw, dict):
        raise SweepError("axes: must be a mapping of keys to lists of values")
    axes: dict[str, list[Any]] = {}
    for key, values in axes_raw.items():
        _check_key(key, "axes")
        if not isinstance(values, list) or not values:
            raise SweepError(f"axes: {key} must be a non-empty list of values, got {values!r}")
        axes[key] = [_check_value(key, v, f"axes: {key}") for v in values]
    settings: list[dict[str, Any]] = []
    if axes:
        settings = [
            dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())
        ]
    points_raw = data.get("points") or []
    if not isinstance(points_raw, list):
        raise SweepError("points: must be a list of mappings")
    for number, point in enumerate(points_raw):
        if not isinstance(point, dict):
            raise SweepError(f"points[{number}]: must be a mapping of keys to values")
        where = f"points[{number}]"
        settings.append({_check_key(k, where): _check_value(k, v, where) for k, v in point.items()})
    if not settings:
        raise SweepError("the sweep has no points: give axes or points")
    return Sweep(
        job=job_path,
        fixed=fixed,
        points=[SweepPoint(i, s) for i, s in enumerate(settings)],
        source=source,
    )


def load_sweep(path: str | Path) -> Sweep:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SweepError(f"cannot read sweep file {path}: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SweepError(f"{path} is not valid YAML: {exc}") from exc
    try:
        return parse_sweep(data, path.absolute().parent, str(path.absolute()))
    except SweepError as exc:
        raise SweepError(f"{path}: {exc}") from exc


def check_points(sweep: Sweep) -> list[str]:
    """Load every point's configuration (no MPI, no model); one message per bad point."""
    from pcpp_mpi.config import ConfigError, load_job

    problems = []
    if not sweep.job.is_file():
        return [f"job file {sweep.job} not found"]
    for point in sweep.points:
        try:
            load_job(sweep.job, sweep.overrides(point))
        except ConfigError as exc:
            problems.append(f"point {point.index}: {exc}")
    return problems


def array_spec(sweep: Sweep) -> str:
    """The ``sbatch --array`` value that runs every point."""
    n = len(sweep.points)
    return "0" if n == 1 else f"0-{n - 1}"


# -- the sweep directory ----------------------------------------------------------------------


def point_name(index: int) -> str:
    return f"point-{index:04d}"


def record_path(sweep_dir: Path, index: int) -> Path:
    return sweep_dir / POINTS_DIR / f"{point_name(index)}.json"


def _write_json(path: Path, data: Any) -> None:
    """Write ``data`` to ``path`` atomically (several array tasks may race)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        raise SweepError(f"cannot read {path}: {exc}") from exc


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _slurm_ids() -> dict[str, str]:
    names = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_NTASKS")
    return {n.lower().removeprefix("slurm_"): os.environ[n] for n in names if n in os.environ}


def write_sweep_json(sweep: Sweep, sweep_dir: Path) -> None:
    """Record the sweep in ``sweep_dir`` once; refuse a directory that holds another sweep."""
    path = sweep_dir / SWEEP_JSON
    wanted = sweep.as_dict()
    existing = _read_json(path)
    if existing is not None:
        same = {k: existing.get(k) for k in ("job", "fixed", "points")}
        if same != {k: wanted[k] for k in ("job", "fixed", "points")}:
            raise SweepError(
                f"{sweep_dir} holds another sweep ({existing.get('source') or 'unknown file'}); "
                "choose another PCPP_OUT"
            )
        return
    _write_json(path, wanted)


@dataclass(frozen=True)
class PointLaunch:
    """What ``slurm/sweep.sbatch`` needs to run one point."""

    index: int
    ntasks: int
    out: Path
    job: Path
    overrides: list[str]

    def lines(self) -> list[str]:
        """The line protocol the sbatch script reads (one ``NAME=value`` per line)."""
        head = [f"NTASKS={self.ntasks}", f"OUT={self.out}", f"JOB={self.job}"]
        return head + [f"SET={o}" for o in self.overrides]


def start_point(sweep: Sweep, index: int, sweep_dir: Path, available: int) -> PointLaunch:
    """Record that point ``index`` starts; raise SweepError (also recorded) if it cannot."""
    point = sweep.point(index)
    write_sweep_json(sweep, sweep_dir)
    record: dict[str, Any] = {
        "index": index,
        "settings": point.settings,
        "overrides": sweep.overrides(point),
        "slurm": _slurm_ids(),
        "host": socket.gethostname(),
        "started": _now(),
        "started_unix": time.time(),
    }
    ntasks = point.ntasks if point.ntasks is not None else available
    record["ntasks"] = ntasks
    error = None
    if ntasks > available:
        error = (
            f"point {index} asks for {ntasks} ranks but the array task has {available} "
            f"(submit with sbatch --ntasks={ntasks} or more)"
        )
    if error is not None:
        record.update(exit_code=2, error=error, finished=_now(), wall_s=0.0)
    _write_json(record_path(sweep_dir, index), record)
    if error is not None:
        raise SweepError(error)
    return PointLaunch(
        index=index,
        ntasks=ntasks,
        out=sweep_dir / point_name(index),
        job=sweep.job,
        overrides=sweep.overrides(point),
    )


def finish_point(sweep_dir: Path, index: int, exit_code: int) -> dict[str, Any]:
    """Add the exit code and wall time to point ``index``'s record."""
    path = record_path(sweep_dir, index)
    record = _read_json(path)
    if record is None:
        raise SweepError(f"{path} is missing: point {index} was never started")
    record["exit_code"] = exit_code
    record["finished"] = _now()
    if "started_unix" in record:
        record["wall_s"] = round(time.time() - float(record["started_unix"]), 3)
    _write_json(path, record)
    return record


# -- collecting -------------------------------------------------------------------------------


@dataclass
class PointResult:
    """One row of the collected table."""

    point: int
    settings: dict[str, Any]
    status: str
    exit_code: int | None = None
    run_dir: str = ""
    image: str = ""
    images: int = 0
    n_ranks: int | None = None
    steps_done: int | None = None
    wall_s: float | None = None
    run_s: float | None = None
    denoise_s: float | None = None
    bytes_sent: int | None = None
    bytes_received: int | None = None
    job_id: str = ""
    error: str = ""


def _seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    try:
        return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    except ValueError:
        return None


def _rank_totals(run_dir: Path, result: PointResult) -> None:
    """Bytes over every rank file, and rank 0's finished steps and their wall time."""
    from pcpp_mpi.output.rank_file import read_table, read_traffic

    rank_files = sorted(run_dir.glob("rank-*.h5"))
    if not rank_files:
        return
    sent = received = 0
    readable = 0
    for path in rank_files:
        try:
            traffic = read_traffic(path)
        except Exception:  # a rank file still being written, or damaged
            continue
        readable += 1
        sent += int(traffic["sent"].sum())
        received += int(traffic["received"].sum())
    if readable:
        result.bytes_sent, result.bytes_received = sent, received
    try:
        steps = read_table(rank_files[0], "steps")
    except Exception:
        return
    result.steps_done = len(steps)
    if len(steps):
        result.denoise_s = round(float(steps["wall"].sum()), 3)


def collect_point(sweep_dir: Path, point: SweepPoint) -> PointResult:
    """One point's row. The status is the run file's own (complete, failed, interrupted), or:
    ``missing`` never started; ``running`` started, no exit code yet; ``rejected`` exit 2
    before any work; ``killed`` the launcher ended but the run file still says running;
    ``unreadable`` a run file that cannot be read; ``failed`` a non-zero exit before the run
    file existed.
    """
    from pcpp_mpi.output import read_run

    result = PointResult(point=point.index, settings=point.settings, status="missing")
    record = _read_json(record_path(sweep_dir, point.index)) or {}
    run_dir = sweep_dir / point_name(point.index)
    exit_code = record.get("exit_code")
    result.exit_code = None if exit_code is None else int(exit_code)
    result.wall_s = record.get("wall_s")
    result.job_id = str(record.get("slurm", {}).get("job_id", ""))
    result.error = str(record.get("error") or "")
    if run_dir.is_dir():
        result.run_dir = str(run_dir)
    run_file = run_dir / "run.h5"
    if run_file.is_file():
        try:
            info = read_run(run_file)
        except Exception as exc:
            result.status = "running" if record and exit_code is None else "unreadable"
            if result.status == "unreadable":
                result.error = result.error or f"{type(exc).__name__}: {exc}"
        else:
            result.status = info.status
            if info.status == "running" and exit_code is not None:
                result.status = "killed"
            result.error = info.error or result.error
            result.n_ranks = info.n_ranks
            result.images = len(info.images)
            result.run_s = _seconds_between(info.created, info.finished)
            pngs = sorted(run_dir.glob("image-*.png"))
            if pngs:
                result.image = str(pngs[0])
            elif info.images:
                result.image = f"{run_file}:/images/{info.images[0].name}"
        _rank_totals(run_dir, result)
    elif record:
        if exit_code is None:
            result.status = "running"
        elif int(exit_code) == 2:
            result.status = "rejected"
        elif int(exit_code) == 0:
            result.status = "unreadable"
            result.error = result.error or "exit code 0 but no run.h5"
        else:
            result.status = "failed"
        if result.status == "failed" and not result.error:
            result.error = f"exit code {exit_code} before run.h5 was written; see the Slurm log"
        if result.status == "rejected" and not result.error:
            result.error = "rejected before any work (exit 2); see the Slurm log"
    return result


def load_sweep_dir(sweep_dir: str | Path) -> Sweep:
    path = Path(sweep_dir) / SWEEP_JSON
    data = _read_json(path)
    if data is None:
        raise SweepError(
            f"{path} not found: {sweep_dir} is not a sweep directory, or no point has started yet"
        )
    return Sweep.from_dict(data)


def collect(sweep_dir: str | Path) -> tuple[list[str], list[PointResult]]:
    """The setting keys (table columns, in order) and one result per point."""
    sweep_dir = Path(sweep_dir)
    sweep = load_sweep_dir(sweep_dir)
    keys: list[str] = []
    for point in sweep.points:
        keys += [k for k in point.settings if k not in keys]
    return keys, [collect_point(sweep_dir, p) for p in sweep.points]


TABLE_COLUMNS = (
    "status",
    "exit_code",
    "n_ranks",
    "steps_done",
    "wall_s",
    "run_s",
    "denoise_s",
    "bytes_sent",
    "bytes_received",
    "image",
    "job_id",
    "error",
)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def table_rows(keys: Sequence[str], results: Sequence[PointResult]) -> list[list[str]]:
    """Header row and one row per point, as strings."""
    rows = [["point", *keys, *TABLE_COLUMNS]]
    for r in results:
        values = asdict(r)
        rows.append(
            [
                str(r.point),
                *(_cell(r.settings.get(k)) for k in keys),
                *(_cell(values[c]) for c in TABLE_COLUMNS),
            ]
        )
    return rows


def format_csv(keys: Sequence[str], results: Sequence[PointResult]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(table_rows(keys, results))
    return out.getvalue()


def format_markdown(keys: Sequence[str], results: Sequence[PointResult]) -> str:
    rows = table_rows(keys, results)

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    text = [line(rows[0]), "|" + "---|" * len(rows[0])]
    text += [line(row) for row in rows[1:]]
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in counts.items())
    return "\n".join(text) + f"\n\n{len(results)} points: {summary}\n"


def format_json(keys: Sequence[str], results: Sequence[PointResult]) -> str:
    points = [asdict(r) for r in results]
    return json.dumps({"keys": list(keys), "points": points}, indent=1) + "\n"


FORMATTERS = {"markdown": format_markdown, "csv": format_csv, "json": format_json}
