"""Load, validate and serialise the job configuration.

The schema (field names, types, defaults) lives in :mod:`pcpp_mpi.config.schema`; this module
turns YAML text plus ``--set`` overrides into that tree of frozen dataclasses and checks every
rule that can be checked without MPI, a GPU or a model. Every error is a :class:`ConfigError`
whose message names the dotted key and the offending value.

Nothing here imports torch or mpi4py: loading a configuration has no side effects.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from pcpp_mpi.config.modes import mode_rule
from pcpp_mpi.config.schema import (
    DISPLACED_MODES,
    GenerationConfig,
    JobConfig,
    ModelConfig,
    ParallelConfig,
    RuntimeConfig,
)

__all__ = [
    "ConfigError",
    "check_ranks",
    "job_from_dict",
    "job_to_dict",
    "job_to_yaml",
    "load_job",
    "validate_job",
]

_MAX_SEED = 2**64 - 1
_LATENT_SCALE = 8  # pixels per latent row/column of the SD-family VAEs
#: Far beyond any real job (samplers use 10 to 1000 steps; the largest SDXL images are a few
#: thousand pixels), small enough that a typo is refused before anything is allocated.
MAX_STEPS = 10_000
MAX_SIZE = 16_384
_REPR_LIMIT = 80


class ConfigError(ValueError):
    """An invalid job configuration; the message names the dotted key and the bad value."""


# --------------------------------------------------------------------------------------------
# Formatting helpers


def _show(value: Any) -> str:
    """Render a value for an error message the way a YAML author would write it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        value = list(value)
    text = repr(value)
    if len(text) > _REPR_LIMIT:
        text = text[: _REPR_LIMIT - 3] + "..."
    return text


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


# --------------------------------------------------------------------------------------------
# YAML reading


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects a key repeated within one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                line = first_line.get(key)
            except TypeError:  # unhashable key: the base class reports it
                continue
            if line is not None:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r} (first on line {line})",
                    key_node.start_mark,
                )
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> Any:
    """Parse one YAML file; every failure becomes a :class:`ConfigError` naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config file is a directory: {path}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text: {exc.reason}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: safe
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "malformed YAML"
        raise ConfigError(f"invalid YAML in {path}{where}: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML in {path}: {exc}") from None


# --------------------------------------------------------------------------------------------
# --set overrides


def _field_types(cls: type) -> dict[str, Any]:
    """The resolved type of every field of a schema dataclass, in declaration order."""
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unknown_key(key: str, cls: type) -> ConfigError:
    known = ", ".join(sorted(f.name for f in dataclasses.fields(cls)))
    return ConfigError(f"unknown key {key!r} (known: {known})")


def _apply_override(data: dict[str, Any], override: str) -> None:
    """Apply one ``a.b=value`` override to ``data`` in place."""
    if not isinstance(override, str) or "=" not in override:
        raise ConfigError(f"--set {_show(override)}: expected KEY=VALUE, e.g. parallel.ratio=0.5")
    key, _, text = override.partition("=")
    key = key.strip()
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise ConfigError(f"--set {override!r}: malformed key {key!r}")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"--set {override!r}: cannot parse value {text!r}: {problem}") from None

    cls: type | None = JobConfig
    node = data
    for depth, name in enumerate(parts):
        dotted = ".".join(parts[: depth + 1])
        if cls is None:
            parent = ".".join(parts[:depth])
            raise ConfigError(f"--set {override!r}: {parent!r} is a value, not a section")
        types_ = _field_types(cls)
        if name not in types_:
            raise ConfigError(f"--set {override!r}: {_unknown_key(dotted, cls)}")
        sub = types_[name]
        cls = sub if dataclasses.is_dataclass(sub) else None
        if depth == len(parts) - 1:
            old = node.get(name)
            if isinstance(old, Mapping) and isinstance(value, Mapping):
                node[name] = _merge(old, value)
            else:
                node[name] = value
            return
        child = node.get(name)
        if child is None:
            child = node[name] = {}
        elif not isinstance(child, dict):
            if not isinstance(child, Mapping):
                raise ConfigError(
                    f"--set {override!r}: {dotted}: expected a mapping, got {_show(child)}"
                )
            child = node[name] = dict(child)
        node = child


def _merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive merge of two mappings; values of ``extra`` win."""
    out = dict(base)
    for k, v in extra.items():
        if isinstance(out.get(k), Mapping) and isinstance(v, Mapping):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


# --------------------------------------------------------------------------------------------
# Building the dataclass tree (type checks)


def _convert(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the schema type ``tp`` and return it in the schema's form."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:  # pragma: no cover - the schema has no such unions
            raise TypeError(f"unsupported schema type for {key}: {tp!r}")
        return _convert(key, value, rest[0])
    if origin is Literal:
        allowed = get_args(tp)
        if isinstance(value, str | bool) and any(
            value == a and type(value) is type(a) for a in allowed
        ):
            return value
        listed = ", ".join(str(a).lower() if isinstance(a, bool) else repr(a) for a in allowed)
        raise ConfigError(f"{key}: must be one of {listed}, got {_show(value)}")
    if origin is tuple:
        args = get_args(tp)
        if len(args) != 2 or args[1] is not Ellipsis:  # pragma: no cover
            raise TypeError(f"unsupported schema type for {key}: {tp!r}")
        if isinstance(value, str) and args[0] is str:
            return (value,)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {_show(value)}")
        return tuple(_convert(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return _build(key, value, tp)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {_show(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {_show(value)}")
    if tp is float:
        if isinstance(value, str) and _looks_numeric(value):
            value = float(value)  # YAML 1.1 reads 1e-3 (no decimal point) as text
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
            if not math.isfinite(number):
                raise ConfigError(f"{key}: expected a finite number, got {_show(value)}")
            return number
        raise ConfigError(f"{key}: expected a number, got {_show(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {_show(value)}")
    raise TypeError(f"unsupported schema type for {key}: {tp!r}")  # pragma: no cover


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _build(prefix: str, data: Any, cls: type) -> Any:
    """Build the dataclass ``cls`` from a mapping; missing keys and null sections keep defaults."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        what = prefix or "configuration"
        raise ConfigError(f"{what}: expected a mapping, got {_show(data)}")
    types_ = _field_types(cls)
    for name in data:
        if name not in types_:
            raise _unknown_key(_join(prefix, str(name)), cls)
    kwargs = {}
    for name, tp in types_.items():
        if name not in data:
            continue
        if data[name] is None and dataclasses.is_dataclass(tp):
            continue  # an empty section (``parallel:``) keeps the section's default
        kwargs[name] = _convert(_join(prefix, name), data[name], tp)
    return cls(**kwargs)


# --------------------------------------------------------------------------------------------
# Semantic checks


def _check_seed(key: str, seed: int) -> None:
    if not 0 <= seed <= _MAX_SEED:
        raise ConfigError(f"{key}: must be in [0, 2**64 - 1], got {seed}")


def _check_model(m: ModelConfig) -> None:
    chosen = {name: getattr(m, name) for name in ("builtin", "path", "arch")}
    chosen = {k: v for k, v in chosen.items() if v is not None}
    if len(chosen) != 1:
        got = ", ".join(f"{k}={_show(v)}" for k, v in chosen.items()) or "none"
        hint = (
            "set the others to null"
            if chosen
            else "e.g. builtin: tiny, or leave the model section out"
        )
        raise ConfigError(
            f"model: exactly one of builtin, path, arch must be set ({hint}), got {got}"
        )
    if m.path is not None and not m.path.strip():
        raise ConfigError(f"model.path: must not be empty, got {_show(m.path)}")
    if m.arch is not None and m.weights is None:
        raise ConfigError(
            f"model.weights: 'random' is required with model.arch "
            f"(arch={_show(m.arch)}), got {_show(m.weights)}"
        )
    if m.arch is None and m.weights is not None:
        raise ConfigError(
            f"model.weights: only allowed with model.arch (this model uses "
            f"model.{m.source}), got {_show(m.weights)}"
        )
    _check_seed("model.seed", m.seed)


def _check_generation(g: GenerationConfig) -> None:
    if g.steps < 1:
        raise ConfigError(f"generation.steps: must be >= 1, got {g.steps}")
    if g.steps > MAX_STEPS:
        raise ConfigError(f"generation.steps: must be <= {MAX_STEPS}, got {g.steps}")
    for name in ("height", "width"):
        size = getattr(g, name)
        if size < _LATENT_SCALE or size % _LATENT_SCALE:
            raise ConfigError(
                f"generation.{name}: must be a multiple of {_LATENT_SCALE} px and at least "
                f"{_LATENT_SCALE} (the latent scale), got {size}"
            )
        if size > MAX_SIZE:
            raise ConfigError(f"generation.{name}: must be <= {MAX_SIZE} px, got {size}")
    if g.guidance_scale < 0:
        raise ConfigError(f"generation.guidance_scale: must be >= 0, got {g.guidance_scale}")
    if not g.prompts:
        raise ConfigError(f"generation.prompts: must hold at least one prompt, got {_show([])}")
    n_neg, n_pos = len(g.negative_prompts), len(g.prompts)
    if n_neg not in (1, n_pos):
        expected = (
            "1 entry"
            if n_pos == 1
            else f"1 entry (used for every prompt) or {n_pos} (one per prompt)"
        )
        raise ConfigError(
            f"generation.negative_prompts: expected {expected}, got {n_neg}: "
            f"{_show(g.negative_prompts)}"
        )
    _check_seed("generation.seed", g.seed)


def _check_parallel(p: ParallelConfig, g: GenerationConfig) -> None:
    if not 0.0 <= p.ratio <= 1.0:
        raise ConfigError(f"parallel.ratio: must be in [0, 1], got {p.ratio}")
    if p.warmup_steps < 0:
        raise ConfigError(f"parallel.warmup_steps: must be >= 0, got {p.warmup_steps}")
    # warmup_steps only matters in the displaced modes; elsewhere the default must not get in
    # the way of a short run
    if p.mode in DISPLACED_MODES:
        if p.warmup_steps > g.steps:
            raise ConfigError(
                f"parallel.warmup_steps: must be <= generation.steps ({g.steps}) in mode "
                f"{p.mode!r}, got {p.warmup_steps}"
            )
        if p.warmup_steps < 1:
            raise ConfigError(
                f"parallel.warmup_steps: mode {p.mode!r} needs at least 1 (the displaced modes "
                "need at least one synchronous step to have stale activations), "
                f"got {p.warmup_steps}"
            )
    _check_cfg_parallel(p, g)


def _check_cfg_parallel(p: ParallelConfig, g: GenerationConfig) -> None:
    if p.cfg_parallel and not mode_rule(p.mode).splits:
        raise ConfigError(
            "parallel.cfg_parallel: mode 'single' runs on one rank and cannot split the CFG "
            "batch over two rank groups (use mode 'sync' on 2 ranks for a CFG split without "
            f"patches), got {_show(p.cfg_parallel)}"
        )
    if p.cfg_parallel and not g.guidance_scale > 1:
        raise ConfigError(
            f"parallel.cfg_parallel: requires generation.guidance_scale > 1 (at "
            f"guidance_scale={g.guidance_scale} there is no classifier-free guidance to "
            f"split), got {_show(p.cfg_parallel)}"
        )


def _check_runtime(r: RuntimeConfig) -> None:
    if r.norm_kernels == "triton" and r.device != "cuda":
        raise ConfigError(
            "runtime.norm_kernels: 'triton' needs runtime.device 'cuda' (the kernels run on a "
            f"GPU), got device {_show(r.device)}; use 'auto' or 'torch'"
        )
    if r.norm_kernels == "triton" and r.compile is True:
        raise ConfigError(
            "runtime.norm_kernels: 'triton' is for uncompiled runs (compiled, inductor "
            "generates the GroupNorm kernels); set runtime.compile: false or auto, or "
            f"norm_kernels: auto, got runtime.compile {_show(r.compile)}"
        )
    if r.compile_cache is not None and not r.compile_cache.strip():
        raise ConfigError("runtime.compile_cache: must be a directory path or null, got ''")


def _check_job(job: JobConfig) -> None:
    _check_model(job.model)
    _check_generation(job.generation)
    _check_runtime(job.runtime)
    _check_parallel(job.parallel, job.generation)


# --------------------------------------------------------------------------------------------
# Public API


def job_from_dict(data: Mapping[str, Any] | None, overrides: Sequence[str] = ()) -> JobConfig:
    """Build and validate a :class:`JobConfig` from plain data (as parsed from YAML).

    ``overrides`` are ``--set``-style ``a.b=value`` strings applied first. ``data`` is not
    modified. ``None`` (an empty YAML document) means all defaults.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"configuration: top level must be a mapping, got {_show(data)}")
    if isinstance(overrides, str):
        overrides = (overrides,)
    tree: dict[str, Any] = copy.deepcopy(dict(data))
    for override in overrides:
        _apply_override(tree, override)
    job = _build("", tree, JobConfig)
    _check_job(job)
    return job


def load_job(path: str | Path, overrides: Sequence[str] = ()) -> JobConfig:
    """Read a YAML job file, apply ``--set`` overrides (``a.b=value``) and validate it."""
    path = Path(path).expanduser()
    data = _read_yaml(path)
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {_show(data)}")
    return job_from_dict(data, overrides)


def job_to_dict(job: JobConfig) -> dict[str, Any]:
    """The configuration as plain YAML-ready data (tuples become lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(job))


def job_to_yaml(job: JobConfig) -> str:
    """The resolved configuration as YAML text, every key present, in schema order."""
    return yaml.safe_dump(
        job_to_dict(job), sort_keys=False, default_flow_style=False, allow_unicode=True
    )


def validate_job(job: JobConfig) -> JobConfig:
    """Check a :class:`JobConfig` built in code with the same rules as a loaded one.

    Returns the normalised equivalent (e.g. integer floats as ``float``).
    """
    return job_from_dict(job_to_dict(job))


def check_ranks(job: JobConfig, n_ranks: int, latent_height: int, unit: int) -> None:
    """Check that ``n_ranks`` ranks can run ``job`` on a latent ``latent_height`` rows high.

    ``unit`` is the band granularity in latent rows (``2**(levels - 1)`` of the UNet). Pure
    arithmetic: no MPI, no model.
    """
    if latent_height < 1 or unit < 1:
        raise ValueError(f"latent_height and unit must be >= 1, got {latent_height}, {unit}")
    mode, cfg = job.parallel.mode, job.parallel.cfg_parallel
    if n_ranks < 1:
        raise ConfigError(f"rank count: must be >= 1, got {n_ranks}")
    if not mode_rule(mode).splits and n_ranks > 1:
        raise ConfigError(
            f"parallel.mode: 'single' runs on exactly one rank, got {n_ranks} ranks; "
            "use another mode (naive, sync, distrifusion, pcpp) or run with 1 rank"
        )
    if cfg and n_ranks % 2:
        raise ConfigError(
            f"parallel.cfg_parallel: true needs an even rank count (two groups: unconditional "
            f"and conditional), got {n_ranks} ranks"
        )
    bands = n_ranks // 2 if cfg else n_ranks
    units = latent_height // unit
    if bands <= units:
        return
    requested = f"{n_ranks} ranks requested"
    if cfg:
        requested += f" ({bands} bands x 2 CFG groups)"
    size = f"generation.height: {job.generation.height} px ({latent_height} latent rows"
    if units == 0:
        raise ConfigError(
            f"{size}) is less than one unit of {unit} rows, so no band fits; {requested}; "
            "use a larger height"
        )
    most = 2 * units if cfg else units
    raise ConfigError(
        f"{size}, {units} units of {unit} rows) allows at most {units} bands; {requested}; "
        f"use at most {most} ranks{' with cfg_parallel' if cfg else ''} or a larger height"
    )
