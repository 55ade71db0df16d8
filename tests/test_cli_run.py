"""``pcpp-mpi run`` end to end, as a user launches it: under mpirun and alone."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from mpi_launch import REPO, mpi_env, mpirun, mpirun_path

from pcpp_mpi.analysis.files import load_run
from pcpp_mpi.output import read_run
from pcpp_mpi.output.rank_file import read_table

pytestmark = pytest.mark.mpi

CLI = [sys.executable, "-m", "pcpp_mpi.cli"]
SMALL = [
    "--set",
    "generation.steps=5",
    "--set",
    "generation.height=128",
    "--set",
    "generation.width=96",
    "--no-progress",
]


def run_alone(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], env=mpi_env(), cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def test_main_job_on_two_ranks_writes_run_file_and_png(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = mpirun(2, [*CLI, "run", "jobs/tiny.yaml", "--out", str(out), *SMALL])
    assert result.returncode == 0, result.stderr[-3000:]
    info = read_run(out / "run.h5")
    assert info.status == "complete"
    assert info.images[0].array.shape == (128, 96, 3)
    assert (out / "image-0000.png").exists()
    assert (out / "rank-0000.h5").exists() and (out / "rank-0001.h5").exists()
    assert info.provenance["mode"] == "pcpp"
    assert info.provenance["model_family"] == "unet"
    assert info.provenance["scheduler"] == "ddim"
    # on the CPU there are no GPU step times: the table is empty and the tools use host times
    assert len(read_table(out / "rank-0000.h5", "gpu_steps")) == 0
    assert load_run(out).step_clock == "host"
    # log lines from rank 0 only, tagged with the rank
    assert "[rank 1]" not in result.stderr
    assert "[rank 0] INFO" in result.stderr


def test_alone_runs_single_and_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = run_alone("run", "jobs/tiny.yaml", "--out", str(out), *SMALL)
    assert first.returncode == 0, first.stderr[-3000:]
    info = read_run(out / "run.h5")
    assert info.provenance["mode"] == "single" and info.provenance["n_ranks"] == 1
    before = (out / "run.h5").read_bytes()

    again = run_alone("run", "jobs/tiny.yaml", "--out", str(out), *SMALL)
    assert again.returncode == 2
    assert "not empty" in again.stderr and "--overwrite" in again.stderr
    assert (out / "run.h5").read_bytes() == before

    replaced = run_alone(
        "run",
        "jobs/tiny.yaml",
        "--out",
        str(out),
        "--overwrite",
        *SMALL,
        "--set",
        "generation.seed=5",
    )
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    new = read_run(out / "run.h5")
    assert new.images[0].seed == 5
    assert not np.array_equal(new.latents["latent-0000"], info.latents["latent-0000"])


def test_too_many_ranks_names_the_largest_count(tmp_path: Path) -> None:
    # 64 px -> 8 latent rows -> 2 units of 4 rows: at most 2 ranks
    result = mpirun(
        3,
        [
            *CLI,
            "run",
            "jobs/tiny.yaml",
            "--out",
            str(tmp_path / "r"),
            "--set",
            "generation.height=64",
            "--no-progress",
        ],
    )
    assert result.returncode == 2
    assert "at most 2 ranks" in result.stderr
    assert result.stderr.count("error:") == 1
    assert not (tmp_path / "r").exists()


def test_missing_model_folder_is_named_before_work(tmp_path: Path) -> None:
    result = run_alone(
        "run",
        "jobs/sd15-local.yaml",
        "--out",
        str(tmp_path / "r"),
        "--set",
        "model.path=/nonexistent/sd15",
        "--set",
        "runtime.device=cpu",
    )
    assert result.returncode == 2
    assert "/nonexistent/sd15" in result.stderr
    assert not (tmp_path / "r").exists()


def test_bad_config_value_is_rejected_with_key(tmp_path: Path) -> None:
    result = mpirun(
        2,
        [
            *CLI,
            "run",
            "jobs/tiny.yaml",
            "--out",
            str(tmp_path / "r"),
            "--set",
            "parallel.ratio=1.5",
        ],
    )
    assert result.returncode == 2
    assert "parallel.ratio" in result.stderr and "1.5" in result.stderr
    assert result.stderr.count("error:") == 1


def test_info_alone() -> None:
    result = run_alone("info", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Open MPI" in result.stdout


def test_truncated_prompt_is_warned_once(tmp_path: Path) -> None:
    """The tiny tokenizer reads 16 words: a longer prompt gets one warning, from rank 0."""
    long_prompt = " ".join(["a red circle at the top left on a blue background"] * 30)
    result = mpirun(
        2,
        [
            *CLI, "run", "jobs/tiny.yaml", "--out", str(tmp_path / "r"), "--no-progress",
            "--set", "generation.steps=2", "--set", "parallel.mode=sync",
            "--set", "generation.height=64", "--set", "generation.width=32",
            "--set", f"generation.prompts=[{long_prompt}]",
        ],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if "truncated" in line]
    assert len(warnings) == 1, result.stderr[-3000:]
    assert "[rank 0]" in warnings[0]
    assert (
        "image 0: the prompt is truncated (330 words, the tiny model reads the first 16)"
        in (warnings[0])
    )


def _launch(out: Path, *extra: str) -> subprocess.Popen[str]:
    command = [mpirun_path(), "-np", "2", "--oversubscribe", "--bind-to", "none", *CLI, "run",
               "jobs/tiny.yaml", "--out", str(out), "--no-progress", "--set", "parallel.mode=sync",
               "--set", "generation.height=64", "--set", "generation.width=32", *extra]  # fmt: skip
    return subprocess.Popen(
        command, env=mpi_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_second_job_into_a_running_jobs_directory_is_refused(tmp_path: Path) -> None:
    """A running job owns its directory: a second one, --overwrite or not, exits 2 before
    loading a model, with one message naming the holder, and deletes nothing: the first job
    runs on (stopped by a signal, it ends ``interrupted``, its own status) and releases it."""
    out = tmp_path / "run"
    # long enough (~25 s) to be still running when the second job (seconds to start under
    # mpirun on a loaded 2-core machine) checks the directory: 60 steps were sometimes done by
    # then; DDIM takes at most 999 steps of the 1000-timestep schedule
    first = _launch(out, "--set", "generation.steps=900", "--set", "generation.seed=1")
    deadline = time.monotonic() + 240
    while not (out / "rank-0001.h5").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    holder = json.loads((out / ".pcpp-mpi.lock").read_text())
    second = _launch(
        out, "--overwrite", "--set", "generation.steps=2", "--set", "generation.seed=2"
    )
    _, stderr = second.communicate(timeout=240)
    assert second.returncode == 2, stderr[-3000:]
    assert stderr.count("error:") == 1, stderr[-3000:]
    assert f"in use by another pcpp-mpi job (host {holder['host']}, pid {holder['pid']}" in stderr
    assert "model" not in stderr.lower()
    # the first job went on undisturbed; stopping it now (instead of waiting for its 900
    # steps) still shows it owns and releases the directory
    assert first.poll() is None, "the first job ended before the second one was checked"
    first.send_signal(signal.SIGTERM)
    _, first_err = first.communicate(timeout=120)
    info = read_run(out / "run.h5")
    assert info.status == "interrupted", first_err[-3000:]
    assert yaml.safe_load(info.config_yaml)["generation"]["seed"] == 1
    assert not (out / ".pcpp-mpi.lock").exists()  # released at the end


def test_two_jobs_started_together_one_is_refused_up_front(tmp_path: Path) -> None:
    out = tmp_path / "run"
    jobs = [_launch(out, "--set", "generation.steps=4", "--set", f"generation.seed={s}")
            for s in (1, 2)]  # fmt: skip
    results = [(job.wait(timeout=600), job.stderr.read() if job.stderr else "") for job in jobs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], [err[-2000:] for _, err in results]
    refused = next(err for code, err in results if code == 2)
    assert refused.count("error:") == 1 and "in use by another pcpp-mpi job" in refused
    assert "File exists" not in refused
    assert read_run(out / "run.h5").status == "complete"
