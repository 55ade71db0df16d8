"""The documentation cites only what exists: modules, functions, commands and files in this
repository (no file outside it)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

import pcpp_mpi.analysis
from pcpp_mpi.cli import _parser

REPO = Path(__file__).resolve().parent.parent
DOCS = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")])
SEARCHED = ("README.md", "docs", "pcpp_mpi", "tests", "tools", "slurm", "jobs")


def _resolve(dotted: str) -> object:
    """Import the longest module prefix of ``dotted`` and get the rest as attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            target = getattr(target, name)
        return target
    raise ModuleNotFoundError(dotted)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_cited_python_name_exists(doc: Path) -> None:
    cited = set(re.findall(r"`(pcpp_mpi(?:\.\w+)+)", doc.read_text()))
    for dotted in sorted(cited):
        assert _resolve(dotted) is not None, dotted


def test_tools_md_cites_only_what_pcpp_mpi_analysis_exports() -> None:
    text = (REPO / "docs" / "TOOLS.md").read_text()
    paragraph = text[text.index("They are thin wrappers") :].split("\n\n", 1)[0]
    exported = re.findall(r"`(\w+)`", paragraph[: paragraph.index("and in its")])
    assert exported and set(exported) <= set(pcpp_mpi.analysis.__all__)
    for name in exported:
        assert getattr(pcpp_mpi.analysis, name) is not None
    functions = re.findall(r"`(pcpp_mpi\.analysis\.\w+\.\w+)`", paragraph)
    assert len(functions) == 5
    for dotted in functions:
        assert callable(_resolve(dotted)), dotted


def _commands(text: str) -> list[str]:
    """Code: the indented lines and the `spans` of a Markdown text."""
    lines = [line for line in text.splitlines() if line.startswith("    ")]
    return lines + re.findall(r"`([^`]+)`", text)


#: A command line that starts ``pcpp-mpi SUBCOMMAND`` (after variables and a launcher).
COMMAND = re.compile(
    r"\s*(?:[A-Z_]+=\S*\s+)*(?:(?:mpirun|srun)\b[^|#]*?\s)?(?:\S*/)?pcpp-mpi ([a-z][a-z-]*)(?:\s|$)"
)
#: Code that looks like a command but is not one: the profiler range of an image's denoising.
NOT_COMMANDS = {"pcpp-mpi denoise"}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_cited_subcommand_exists(doc: Path) -> None:
    parser = _parser()
    for code in _commands(doc.read_text()):
        match = COMMAND.match(code)
        if match and code not in NOT_COMMANDS:
            with pytest.raises(SystemExit) as done:
                parser.parse_args([match[1], "--help"])
            assert done.value.code == 0, (doc.name, code)


#: Cited by docs/BENCHMARKS.md as being on a branch, but not in this repository (left as is).
KNOWN_MISSING_SCRIPTS = {"device/gates_diag.sh"}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_cited_tools_script_exists(doc: Path) -> None:
    for script in re.findall(r"tools/([\w/.-]+\.(?:py|sh))", doc.read_text()):
        if script not in KNOWN_MISSING_SCRIPTS:
            assert (REPO / "tools" / script).is_file(), (doc.name, script)


def test_nothing_cites_files_outside_the_repository() -> None:
    offenders = []
    for top in SEARCHED:
        root = REPO / top
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for path in files:
            if path.suffix not in {".md", ".py", ".sh", ".sbatch", ".yaml", ""}:
                continue
            if path == Path(__file__).resolve():
                continue
            text = path.read_text(errors="replace")
            if "DESIGN.md" in text or re.search(r"(?<![\w/])shared/", text):
                offenders.append(str(path.relative_to(REPO)))
    assert offenders == []
