"""The layering of docs/ARCHITECTURE.md, checked statically: every ``import`` of every module of
pcpp_mpi is read with :mod:`ast` (nothing is imported). Imports under ``if TYPE_CHECKING:``
are left out (annotations only). "At import time" follows module-level imports, and the
``__init__`` of every package on the way, transitively; "anywhere" includes imports inside
functions (lazy imports)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pcpp_mpi"
HEAVY = ("torch", "diffusers", "transformers", "mpi4py", "triton")

#: Known violations ``(module, imported module)``, each to be removed by the work named
#: (docs/ARCHITECTURE.md lists them). None at present.
KNOWN_EXCEPTIONS: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True)
class Import:
    target: str  # the imported module (``from a.b import c``: a.b, and a.b.c if it is one)
    top_level: bool  # at module level, not inside a function


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and ast.unparse(node.test) in {
        "TYPE_CHECKING",
        "typing.TYPE_CHECKING",
    }


def _walk(node: ast.AST, top_level: bool) -> Iterator[tuple[ast.AST, bool]]:
    for child in ast.iter_child_nodes(node):
        if _is_type_checking(child):
            continue
        inner = top_level and not isinstance(
            child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
        )
        yield child, inner
        yield from _walk(child, inner)


@cache
def imports(module: str) -> tuple[Import, ...]:
    path = modules()[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[Import] = []
    for node, top in _walk(ast.parse(path.read_text()), True):
        if isinstance(node, ast.Import):
            found += [Import(alias.name, top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found.append(Import(base, top))
            found += [
                Import(f"{base}.{a.name}", top)
                for a in node.names
                if f"{base}.{a.name}" in modules()
            ]
    return tuple(found)


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


@cache
def loaded_at_import(module: str) -> frozenset[str]:
    """Every module (ours and third-party top-level names) importing ``module`` loads."""
    seen: set[str] = set()
    todo = [module, *_parents(module)]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name not in modules():
            continue
        for imp in imports(name):
            if imp.top_level:
                target = imp.target if imp.target in modules() else imp.target.split(".")[0]
                if imp.target.startswith("pcpp_mpi.") and imp.target not in modules():
                    target = imp.target.rpartition(".")[0]  # ``from pkg import name``
                todo += [target, *_parents(target)]
    return frozenset(seen)


@cache
def reachable(module: str) -> frozenset[str]:
    """Every module ``module`` may import when its functions run: imports anywhere (lazy ones
    included), followed transitively through our modules; the packages on the way count with
    what they load at import (their ``__init__`` runs, not their functions)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name not in modules():
            continue
        for imp in imports(name):
            target = imp.target if imp.target in modules() else imp.target.split(".")[0]
            if imp.target.startswith("pcpp_mpi.") and imp.target not in modules():
                target = imp.target.rpartition(".")[0]  # ``from pkg import name``
            todo.append(target)
            for parent in _parents(target):
                seen |= loaded_at_import(parent)
    return frozenset(seen)


def in_group(module: str, group: str) -> bool:
    return module == group or module.startswith(group + ".")


def ours(module: str, *groups: str) -> list[str]:
    return [m for m in modules() if any(in_group(m, f"pcpp_mpi.{g}") for g in groups)]


def direct(module: str, *, anywhere: bool = True) -> set[str]:
    return {i.target for i in imports(module) if anywhere or i.top_level} - {
        t for m, t in KNOWN_EXCEPTIONS if m == module
    }


def test_the_scan_sees_known_imports() -> None:
    """The parser finds module-level, lazy and relative-free imports (a guard for the rules)."""
    assert "pcpp_mpi.geometry" in direct("pcpp_mpi.plan.accounting")
    assert "mpi4py" in direct("pcpp_mpi.cli") and "mpi4py" not in direct(
        "pcpp_mpi.cli", anywhere=False
    )
    assert "torch" in loaded_at_import("pcpp_mpi.engine.runner")
    assert "pcpp_mpi.comm.frames" not in direct("pcpp_mpi.comm.exchanges")  # TYPE_CHECKING
    assert {"mpi4py", "pcpp_mpi.comm.context"} <= reachable("pcpp_mpi.cli")


def test_frames_do_not_import_the_exchanges() -> None:
    """The exchanges place buffers in frames; frames need only the wire spec (no cycle)."""
    assert "pcpp_mpi.comm.exchanges" not in direct("pcpp_mpi.comm.frames")
    assert "pcpp_mpi.comm.wire" in direct("pcpp_mpi.comm.frames")


# -- the rules of docs/ARCHITECTURE.md --------------------------------------------------------


PURE = ("config", "geometry", "trace", "logs", "commands.exits")


@pytest.mark.parametrize("module", ours("", *PURE))
def test_pure_modules_load_neither_torch_nor_mpi(module: str) -> None:
    assert not set(HEAVY) & loaded_at_import(module), module
    assert not any(
        in_group(t, f"pcpp_mpi.{g}") for t in direct(module) for g in ("engine", "comm", "parallel")
    )


@pytest.mark.parametrize("module", ours("", "plan"))
def test_the_planning_layer_needs_neither_torch_nor_mpi_anywhere(module: str) -> None:
    """plan/ imports only the pure layer: no heavy package, even lazily, and no module of the
    run path (engine/, comm/, parallel/, models/) nor anything above it."""
    assert not set(HEAVY) & loaded_at_import(module), module
    assert not {t.split(".")[0] for t in direct(module)} & set(HEAVY), module
    allowed = ("config", "geometry", "plan")
    ours_imported = {t for t in direct(module) if t.startswith("pcpp_mpi.")}
    assert {
        t for t in ours_imported if not any(in_group(t, f"pcpp_mpi.{g}") for g in allowed)
    } == set(), module


def test_plan_command_reaches_no_mpi() -> None:
    """``pcpp-mpi plan`` (commands/plan and planning, lazy imports followed) never reaches
    mpi4py, comm/ or engine/; it may use torch (models/, the families, parallel/) to trace the
    layer inventory."""
    for module in ("pcpp_mpi.commands.plan", "pcpp_mpi.planning"):
        reached = reachable(module)
        assert "mpi4py" not in reached, module
        assert not [m for m in reached if in_group(m, "pcpp_mpi.comm")], module
        assert not [m for m in reached if in_group(m, "pcpp_mpi.engine")], module
    assert "pcpp_mpi.plan.report" in reachable("pcpp_mpi.commands.plan")


@pytest.mark.parametrize("module", ["pcpp_mpi", "pcpp_mpi.api", "pcpp_mpi.cli", "pcpp_mpi.sweep"])
def test_entry_points_load_neither_torch_nor_mpi_at_import(module: str) -> None:
    assert not set(HEAVY) & loaded_at_import(module), module


def test_only_comm_and_the_entry_points_import_mpi4py() -> None:
    allowed = {"pcpp_mpi.cli", "pcpp_mpi.api", "pcpp_mpi.commands.info"}
    users = {m for m in modules() if any(t.split(".")[0] == "mpi4py" for t in direct(m))}
    assert users - set(ours("", "comm")) == allowed


@pytest.mark.parametrize("module", ours("", "analysis"))
def test_analysis_needs_neither_engine_nor_mpi(module: str) -> None:
    assert not any(
        in_group(t, f"pcpp_mpi.{g}")
        for t in direct(module)
        for g in ("engine", "comm", "parallel", "models", "shapes")
    ), module
    assert not set(HEAVY) & loaded_at_import(module), module


@pytest.mark.parametrize("module", ours("", "output"))
def test_output_loads_neither_torch_nor_mpi(module: str) -> None:
    assert not set(HEAVY) & loaded_at_import(module), module


@pytest.mark.parametrize("module", ours("", "comm"))
def test_comm_imports_no_layer_above_it(module: str) -> None:
    above = (
        "engine", "parallel", "families", "models", "output", "shapes", "analysis", "planning",
    )  # fmt: skip
    assert not any(in_group(t, f"pcpp_mpi.{g}") for t in direct(module) for g in above), module


@pytest.mark.parametrize("module", ours("", "parallel"))
def test_parallel_imports_no_engine(module: str) -> None:
    above = ("engine", "families", "models", "output", "shapes", "analysis", "planning")
    assert not any(in_group(t, f"pcpp_mpi.{g}") for t in direct(module) for g in above), module


@pytest.mark.parametrize("module", ours("", "parallel"))
def test_parallel_reaches_no_mpi(module: str) -> None:
    """The band-parallel layers name comm/'s types only for annotations (the communicator is
    handed in as a ``BandComm``), so making a model band-parallel, and ``pcpp-mpi plan``
    through the families, import no MPI."""
    assert "mpi4py" not in reachable(module), module
    assert "pcpp_mpi.comm.context" not in reachable(module), module


@pytest.mark.parametrize("module", ours("", "families"))
def test_families_import_neither_engine_nor_comm(module: str) -> None:
    above = ("engine", "comm", "output", "shapes", "analysis", "planning", "commands")
    assert not any(in_group(t, f"pcpp_mpi.{g}") for t in direct(module) for g in above), module
    assert "mpi4py" not in reachable(module), module


def test_a_family_folder_is_imported_only_by_itself_and_the_lookup() -> None:
    """The engine, planning and the generic layers reach a network only through its family
    (``pcpp_mpi.families``), and no family imports another's folder."""
    folders = {m for m in modules() if m.count(".") == 2 and in_group(m, "pcpp_mpi.families")}
    folders = {f for f in folders if modules()[f].name == "__init__.py"}
    assert "pcpp_mpi.families.unet" in folders
    # the VAE decoder is not yet a ModelFamily entry: the decode (engine/decode) and the plan
    # (planning) reach it directly until it becomes one
    decoder_users = {"pcpp_mpi.engine.decode", "pcpp_mpi.planning"}
    for folder in folders:
        users = {
            m
            for m in modules()
            if not in_group(m, folder) and any(in_group(t, folder) for t in direct(m))
        }
        allowed = {"pcpp_mpi.families"}
        if folder == "pcpp_mpi.families.vae_decoder":
            allowed |= decoder_users
        assert users <= allowed, (folder, users)


def test_the_decoder_inventory_reaches_no_mpi() -> None:
    """``planning`` traces the VAE decoder through this module: no comm/, no mpi4py."""
    reached = reachable("pcpp_mpi.families.vae_decoder.inventory")
    assert "mpi4py" not in reached
    assert not [m for m in reached if in_group(m, "pcpp_mpi.comm")]


@pytest.mark.parametrize("module", ours("", "models"))
def test_models_import_no_engine_comm_or_data_set(module: str) -> None:
    above = ("engine", "comm", "parallel", "families", "output", "shapes", "analysis", "planning")
    assert not any(in_group(t, f"pcpp_mpi.{g}") for t in direct(module) for g in above), module


def test_nothing_outside_shapes_imports_the_data_set() -> None:
    users = {
        m
        for m in modules()
        if not in_group(m, "pcpp_mpi.shapes")
        and any(in_group(t, "pcpp_mpi.shapes") for t in direct(m))
    }
    assert users == set()


def test_the_command_layer_is_imported_by_the_entry_point_only() -> None:
    users = {
        m
        for m in modules()
        if not in_group(m, "pcpp_mpi.commands")
        and any(in_group(t, "pcpp_mpi.commands") or t == "pcpp_mpi.cli" for t in direct(m))
    }
    assert users == {"pcpp_mpi.cli"}


def test_known_exceptions_still_exist() -> None:
    """An exception that no longer applies is removed from the list (and from the doc)."""
    for module, target in KNOWN_EXCEPTIONS:
        assert target in {i.target for i in imports(module)}, (module, target)


def test_the_run_path_reads_the_plan_layer() -> None:
    """The facts the plan derives are the ones the run uses: one layout, one schedule, one
    topology, one inventory description."""
    assert "pcpp_mpi.plan.layout" in direct("pcpp_mpi.engine.setup")
    assert "pcpp_mpi.plan.layout" in direct("pcpp_mpi.engine.runner")
    assert "pcpp_mpi.plan.schedule" in direct("pcpp_mpi.parallel.clock")
    assert "pcpp_mpi.plan.topology" in direct("pcpp_mpi.parallel.apply")
    assert "pcpp_mpi.plan.topology" in direct("pcpp_mpi.comm.context")
    assert "pcpp_mpi.plan.inventory" in direct("pcpp_mpi.parallel.inventory")
    assert "pcpp_mpi.plan.report" in direct("pcpp_mpi.planning")


def test_the_engine_and_the_plan_reach_the_model_through_its_family() -> None:
    for module in ("pcpp_mpi.engine.setup", "pcpp_mpi.engine.runner", "pcpp_mpi.planning"):
        assert "pcpp_mpi.families" in direct(module), module
    assert "pcpp_mpi.families.base" in direct("pcpp_mpi.engine.graphs")


def _group(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_no_import_cycle_between_packages() -> None:
    """Package-level graph (module-level imports) is acyclic, the root package aside."""
    edges: dict[str, set[str]] = {}
    for module in modules():
        source = _group(module)
        for imp in imports(module):
            target = _group(imp.target) if imp.target.startswith("pcpp_mpi.") else None
            if source and target and imp.top_level and target != source:
                edges.setdefault(source, set()).add(target)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in edges.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    cycles = sorted(g for g in edges if reaches(g, g, {g}))
    assert cycles == []


def test_every_module_has_a_line_in_the_architecture_doc() -> None:
    text = (PACKAGE.parent / "docs" / "ARCHITECTURE.md").read_text()
    missing = []
    for module, path in modules().items():
        if path.name == "__init__.py" and module != "pcpp_mpi":
            continue
        name = "__init__" if module == "pcpp_mpi" else module.removeprefix("pcpp_mpi.")
        if f"`{name.replace('.', '/')}`" not in text:
            missing.append(name)
    assert missing == []
