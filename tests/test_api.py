"""The Python API (pcpp_mpi.api): jobs and settings in-process, and README's example as written,
run on one rank and under ``mpirun -np 2``."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mpi_launch import REPO, mpi_env, mpirun

import pcpp_mpi
from pcpp_mpi.config import ConfigError

TINY = REPO / "jobs" / "tiny.yaml"


def readme_example() -> str:
    """The one ```python block of README.md's "Python API" section, exactly."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Python API") :].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1
    return blocks[0]


def test_load_job_from_a_file_and_from_a_dict() -> None:
    from_file = pcpp_mpi.load_job(TINY, ["generation.steps=6"])
    assert from_file.generation.steps == 6 and from_file.parallel.mode == "pcpp"
    data = {"model": {"builtin": "tiny"}, "generation": {"height": 64, "width": 64}}
    from_dict = pcpp_mpi.load_job(data, {"parallel.mode": "sync", "generation.prompts": ["a b"]})
    assert from_dict.generation.height == 64 and from_dict.parallel.mode == "sync"
    assert from_dict.generation.prompts == ("a b",)
    assert data == {"model": {"builtin": "tiny"}, "generation": {"height": 64, "width": 64}}


def test_with_settings_copies_and_validates() -> None:
    job = pcpp_mpi.load_job(TINY)
    changed = pcpp_mpi.with_settings(job, {"parallel.ratio": 0.5, "generation.seed": 7})
    assert (changed.parallel.ratio, changed.generation.seed) == (0.5, 7)
    assert (job.parallel.ratio, job.generation.seed) == (0.3, 0)
    assert pcpp_mpi.with_settings(job, ["parallel.mode=sync"]).parallel.mode == "sync"
    with pytest.raises(ConfigError, match=r"parallel\.bogus"):
        pcpp_mpi.with_settings(job, ["parallel.bogus=1"])
    with pytest.raises(ConfigError, match=r"parallel\.ratio"):
        pcpp_mpi.with_settings(job, {"parallel.ratio": 7})


def test_importing_the_api_loads_neither_torch_nor_mpi() -> None:
    code = "import sys, pcpp_mpi; print(sorted({'torch', 'mpi4py.MPI'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


def test_every_api_function_has_a_docstring() -> None:
    for name in ("load_job", "with_settings", "run", "open_run", "RunDirectory"):
        assert getattr(pcpp_mpi, name).__doc__, name
    ast.parse(readme_example())  # the example is valid Python


def _example_dir(tmp_path: Path) -> Path:
    (tmp_path / "jobs").mkdir()
    shutil.copy(TINY, tmp_path / "jobs" / "tiny.yaml")
    script = tmp_path / "example.py"
    script.write_text(readme_example())
    return script


def _check_written(tmp_path: Path, n_ranks: int, stdout: str) -> None:
    assert stdout.count("complete") == 1, stdout  # printed by rank 0 only
    assert f"complete {n_ranks} rank(s), median step" in stdout
    assert f"steps per rank: {[4] * n_ranks}" in stdout
    assert "images: {'image-0000': (64, 64, 3)}" in stdout
    run = pcpp_mpi.open_run(tmp_path / "runs" / "api-example" / "run.h5")
    assert run.status == "complete" and run.info().n_ranks == n_ranks
    job = run.job()
    assert (job.generation.steps, job.generation.height, job.parallel.warmup_steps) == (4, 64, 1)
    assert sorted(p.name for p in run.path.glob("rank-*.h5")) == [
        f"rank-{r:04d}.h5" for r in range(n_ranks)
    ]
    assert (run.path / "image-0000.png").is_file()


def test_readme_example_on_one_rank(tmp_path: Path) -> None:
    script = _example_dir(tmp_path)
    done = subprocess.run(
        [sys.executable, str(script)],
        env=mpi_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    _check_written(tmp_path, 1, done.stdout)


@pytest.mark.mpi
def test_readme_example_under_mpirun(tmp_path: Path) -> None:
    script = _example_dir(tmp_path)
    done = mpirun(2, [sys.executable, str(script)], cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    _check_written(tmp_path, 2, done.stdout)


def test_after_step_hooks_run_after_every_step_and_a_raising_one_fails_the_run(
    tmp_path: Path,
) -> None:
    """``run(after_step=...)`` on one rank, in this process: the hooks are called in order with
    ``(image, step)`` after every step of every image, each step already in the rank file; an
    exception in a hook ends the run with that exception and ``failed`` in ``run.h5``."""
    from pcpp_mpi.output.rank_file import read_table

    job = pcpp_mpi.load_job(
        TINY,
        {
            "generation.height": 32,
            "generation.width": 32,
            "generation.steps": 3,
            "generation.prompts": ["a red circle", "a blue square"],
            "parallel.warmup_steps": 1,
        },
    )
    calls: list[tuple[str, int, int]] = []
    recorded: list[int] = []

    def first(image: int, step: int) -> None:
        calls.append(("first", image, step))
        recorded.append(len(read_table(tmp_path / "run" / "rank-0000.h5", "steps")))

    def second(image: int, step: int) -> None:
        calls.append(("second", image, step))

    run = pcpp_mpi.run(job, tmp_path / "run", after_step=[first, second])
    assert run.status == "complete"
    steps = [(image, step) for image in range(2) for step in range(3)]
    assert calls == [(name, *s) for s in steps for name in ("first", "second")]
    assert recorded == list(range(1, 7))  # the step was written before the hooks ran

    def fail(image: int, step: int) -> None:
        if (image, step) == (1, 0):
            raise RuntimeError("a hook failed")

    with pytest.raises(RuntimeError, match="a hook failed"):
        pcpp_mpi.run(job, tmp_path / "failed", after_step=[fail])
    failed = pcpp_mpi.open_run(tmp_path / "failed")
    assert failed.status == "failed" and "a hook failed" in failed.info().error
    assert len(failed.images()) == 1  # image 0 finished before the failure
