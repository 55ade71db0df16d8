"""Slurm job scripts (slurm/) and ``pcpp-mpi sweep`` (list, array, start, finish, collect).

The first part needs no cluster: sweep files, collecting a hand-made sweep directory, and
static checks of the job scripts. The second part submits the scripts to a real Slurm cluster
(`bash tests/slurm/cluster.sh start` makes a one-node one on a Debian machine, as root); it is
skipped when none answers, except under ``CI=true``, where a missing cluster is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from pcpp_mpi.cli import main as cli_main
from pcpp_mpi.config import load_job
from pcpp_mpi.output import RunFile, read_run, write_png
from pcpp_mpi.output.rank_file import (
    RankFile,
    rank_file_name,
    read_rank_attrs,
    read_table,
    read_traffic,
)
from pcpp_mpi.sweep import (
    SweepError,
    collect,
    finish_point,
    format_override,
    load_sweep,
    parse_sweep,
    start_point,
    write_sweep_json,
)
from pcpp_mpi.trace.recorder import StepRow

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "jobs" / "tiny.yaml"
PCPP_SBATCH = REPO / "slurm" / "pcpp.sbatch"
SWEEP_SBATCH = REPO / "slurm" / "sweep.sbatch"
#: The installed entry point (console script) next to this Python.
PCPP_MPI = str(Path(sys.executable).parent / "pcpp-mpi")
COLLECT = [PCPP_MPI, "sweep", "collect"]
CLUSTER_SH = REPO / "tests" / "slurm" / "cluster.sh"
SCRIPTS = (PCPP_SBATCH, SWEEP_SBATCH, CLUSTER_SH)

# ---------------------------------------------------------------------------------------------
# Sweep files
# ---------------------------------------------------------------------------------------------


def test_axes_expand_in_order_then_points(tmp_path: Path) -> None:
    sweep = parse_sweep(
        {
            "job": "jobs/tiny.yaml",
            "set": {"generation.steps": 4},
            "axes": {"parallel.mode": ["sync", "pcpp"], "ntasks": [1, 2]},
            "points": [{"parallel.mode": "naive"}],
        },
        tmp_path,
    )
    assert sweep.job == (tmp_path / "jobs" / "tiny.yaml").resolve()
    settings = [p.settings for p in sweep.points]
    assert settings == [
        {"parallel.mode": "sync", "ntasks": 1},
        {"parallel.mode": "sync", "ntasks": 2},
        {"parallel.mode": "pcpp", "ntasks": 1},
        {"parallel.mode": "pcpp", "ntasks": 2},
        {"parallel.mode": "naive"},
    ]
    assert [p.index for p in sweep.points] == list(range(5))
    assert [p.ntasks for p in sweep.points] == [1, 2, 1, 2, None]
    # ntasks is a launch setting, not a configuration key
    assert sweep.overrides(sweep.points[3]) == ["generation.steps=4", "parallel.mode=pcpp"]


def test_point_settings_override_the_fixed_ones(tmp_path: Path) -> None:
    sweep = parse_sweep(
        {"job": str(TINY), "set": {"parallel.ratio": 0.3}, "points": [{"parallel.ratio": 0.9}]},
        tmp_path,
    )
    assert sweep.job == TINY
    assert sweep.overrides(sweep.points[0]) == ["parallel.ratio=0.9"]


@pytest.mark.parametrize(
    "value",
    ["sync", "0.3", 0.3, 7, True, "yes", "a red", "x: y", [256, 512], "", None, "1e3", "a\nb"],
)
def test_overrides_read_back_as_the_same_value(value: object) -> None:
    text = format_override("a.b", value)
    key, _, raw = text.partition("=")
    assert key == "a.b"
    assert yaml.safe_load(raw) == value
    assert "\n" not in text  # slurm/sweep.sbatch reads one override per line


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "mapping"),
        ({"axes": {"parallel.mode": ["sync"]}}, "job"),
        ({"job": "j.yaml", "axis": {}}, "unknown sweep key"),
        ({"job": "j.yaml"}, "no points"),
        ({"job": "j.yaml", "axes": {"parallel.mode": []}}, "non-empty list"),
        ({"job": "j.yaml", "axes": {"parallel.mode": "sync"}}, "non-empty list"),
        ({"job": "j.yaml", "axes": {"ntasks": [0]}}, "positive integer"),
        ({"job": "j.yaml", "axes": {"ntasks": ["2"]}}, "positive integer"),
        ({"job": "j.yaml", "set": {"ntasks": 2}, "points": [{}]}, "not a configuration key"),
        ({"job": "j.yaml", "points": [{"bad key": 1}]}, "not a configuration key"),
        ({"job": "j.yaml", "points": ["sync"]}, "points[0]"),
    ],
)
def test_bad_sweep_files_are_refused(tmp_path: Path, data: object, message: str) -> None:
    with pytest.raises(SweepError, match=re.escape(message)):
        parse_sweep(data, tmp_path)


def _write_sweep(tmp_path: Path, body: dict) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def test_every_point_loads_as_a_job(tmp_path: Path) -> None:
    path = _write_sweep(
        tmp_path,
        {
            "job": str(TINY),
            "set": {"generation.steps": 6},
            "axes": {"parallel.mode": ["sync", "pcpp"], "parallel.ratio": [0.3, 0.6]},
        },
    )
    sweep = load_sweep(path)
    jobs = [load_job(sweep.job, sweep.overrides(p)) for p in sweep.points]
    assert [(j.parallel.mode, j.parallel.ratio) for j in jobs] == [
        ("sync", 0.3),
        ("sync", 0.6),
        ("pcpp", 0.3),
        ("pcpp", 0.6),
    ]
    assert all(j.generation.steps == 6 for j in jobs)


def sweep_main(argv: list[str]) -> int:
    return cli_main(["sweep", *argv])


def test_sweep_helper_list_and_array(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = _write_sweep(tmp_path, {"job": str(TINY), "axes": {"parallel.mode": ["sync", "pcpp"]}})
    assert sweep_main(["array", str(good)]) == 0
    assert capsys.readouterr().out.strip() == "0-1"
    assert sweep_main(["list", str(good)]) == 0
    assert "sbatch --array=0-1" in capsys.readouterr().out
    bad = _write_sweep(tmp_path, {"job": str(TINY), "points": [{"parallel.mode": "bogus"}]})
    assert sweep_main(["list", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "point 0" in err and "parallel.mode" in err


def test_the_shipped_example_sweep_is_valid() -> None:
    sweep = load_sweep(REPO / "slurm" / "tiny-sweep.yaml")
    assert sweep.job == TINY
    assert len(sweep.points) >= 2
    assert sweep_main(["list", str(REPO / "slurm" / "tiny-sweep.yaml")]) == 0


# ---------------------------------------------------------------------------------------------
# Collecting a sweep directory (made by hand with the real writers)
# ---------------------------------------------------------------------------------------------


def _fake_run(run_dir: Path, status: str, steps: int, n_ranks: int = 2) -> None:
    """A run directory as pcpp-mpi leaves it, with ``steps`` finished steps on every rank."""
    run_dir.mkdir(parents=True)
    run_file = RunFile.create(
        run_dir / "run.h5",
        config_yaml="generation: {steps: 9}\n",
        provenance={"n_ranks": n_ranks},
        n_ranks=n_ranks,
        rank_files=[rank_file_name(r) for r in range(n_ranks)],
    )
    for rank in range(n_ranks):
        rank_file = RankFile(run_dir / rank_file_name(rank), {"rank": rank, "n_ranks": n_ranks})
        rank_file.append(
            steps=[StepRow(0, s, "sync", float(s), s + 0.25) for s in range(steps)],
            traffic=[(0, s, "halo", 1000, 900) for s in range(steps)],
        )
        rank_file.close()
    if status == "complete":
        image = np.zeros((8, 16, 3), dtype=np.uint8)
        run_file.add_image(0, image, "a prompt", 0)
        write_png(run_dir / "image-0000.png", image)
    if status != "running":
        run_file.set_status(status, error=None if status == "complete" else f"it {status}")
    run_file.close()


@pytest.fixture
def sweep_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A sweep of 7 points in every state collect() knows."""
    path = _write_sweep(
        tmp_path,
        {
            "job": str(TINY),
            "axes": {"parallel.mode": ["sync", "pcpp"]},
            "points": [
                {"parallel.mode": "sync", "ntasks": 4},
                {"parallel.mode": "naive"},
                {"parallel.mode": "naive", "parallel.ratio": 0.5},
                {"parallel.mode": "pcpp", "parallel.ratio": 1.0},
                {"parallel.mode": "distrifusion"},
            ],
        },
    )
    sweep = load_sweep(path)
    out = tmp_path / "runs" / "sweep-7"
    monkeypatch.setenv("SLURM_JOB_ID", "8")
    # 0: complete
    start_point(sweep, 0, out, available=2)
    _fake_run(out / "point-0000", "complete", steps=9)
    finish_point(out, 0, 0)
    # 1: interrupted after 3 steps
    start_point(sweep, 1, out, available=2)
    _fake_run(out / "point-0001", "interrupted", steps=3)
    finish_point(out, 1, 3)
    # 2: asks for more ranks than the array task has: rejected before launching
    with pytest.raises(SweepError, match="asks for 4 ranks"):
        start_point(sweep, 2, out, available=2)
    # 3: never started (missing); 4: started, nothing written yet (running)
    start_point(sweep, 4, out, available=2)
    # 5: the ranks were killed: the run file still says running, the launcher returned 137
    start_point(sweep, 5, out, available=2)
    _fake_run(out / "point-0005", "running", steps=2)
    finish_point(out, 5, 137)
    # 6: failed before the run file existed (e.g. a rank could not start)
    start_point(sweep, 6, out, available=2)
    finish_point(out, 6, 1)
    return out


def test_collect_reports_every_point(sweep_dir: Path) -> None:
    keys, results = collect(sweep_dir)
    assert keys == ["parallel.mode", "ntasks", "parallel.ratio"]
    by_point = {r.point: r for r in results}
    assert [by_point[i].status for i in range(7)] == [
        "complete",
        "interrupted",
        "rejected",
        "missing",
        "running",
        "killed",
        "failed",
    ]
    done = by_point[0]
    assert done.exit_code == 0 and done.n_ranks == 2 and done.images == 1
    assert done.image == str(sweep_dir / "point-0000" / "image-0000.png")
    assert done.steps_done == 9
    assert done.bytes_sent == 2 * 9 * 1000 and done.bytes_received == 2 * 9 * 900
    assert done.denoise_s == pytest.approx(9 * 0.25)
    assert done.wall_s is not None and done.wall_s >= 0
    assert done.job_id == "8"
    stopped = by_point[1]
    assert stopped.steps_done == 3 and stopped.exit_code == 3 and stopped.image == ""
    assert stopped.error == "it interrupted"
    assert "asks for 4 ranks" in by_point[2].error and by_point[2].exit_code == 2
    assert by_point[3].exit_code is None and by_point[3].run_dir == ""
    assert by_point[5].exit_code == 137 and by_point[5].steps_done == 2
    assert "exit code 1" in by_point[6].error


def test_collect_sweep_tool_formats(sweep_dir: Path) -> None:
    def tool(*args: str) -> subprocess.CompletedProcess[str]:
        command = [*COLLECT, *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    assert tool("--help").returncode == 0
    markdown = tool(str(sweep_dir))
    assert markdown.returncode == 0, markdown.stderr
    lines = markdown.stdout.splitlines()
    assert lines[0].startswith("| point | parallel.mode | ntasks | parallel.ratio | status |")
    assert len([ln for ln in lines if ln.startswith("| ")]) == 1 + 7
    assert "7 points: 1 complete, 1 interrupted" in markdown.stdout
    assert "points not complete: [1, 2, 3, 4, 5, 6]" in markdown.stderr

    csv_out = sweep_dir.parent / "table.csv"
    result = tool(str(sweep_dir), "--format", "csv", "-o", str(csv_out))
    assert result.returncode == 0
    rows = [ln.split(",") for ln in csv_out.read_text().splitlines()]
    assert len(rows) == 8 and rows[1][:5] == ["0", "sync", "", "", "complete"]

    as_json = tool(str(sweep_dir), "--format", "json", "--require-complete")
    assert as_json.returncode == 1
    data = json.loads(as_json.stdout)
    assert [p["status"] for p in data["points"]][:2] == ["complete", "interrupted"]
    assert data["points"][0]["settings"] == {"parallel.mode": "sync"}

    missing = tool(str(sweep_dir.parent / "nothing"))
    assert missing.returncode == 2 and "not a sweep directory" in missing.stderr


def test_a_sweep_directory_holds_one_sweep(tmp_path: Path) -> None:
    first = parse_sweep({"job": str(TINY), "points": [{"parallel.mode": "sync"}]}, tmp_path)
    other = parse_sweep({"job": str(TINY), "points": [{"parallel.mode": "pcpp"}]}, tmp_path)
    write_sweep_json(first, tmp_path / "s")
    write_sweep_json(first, tmp_path / "s")  # the same sweep again: fine
    with pytest.raises(SweepError, match="holds another sweep"):
        write_sweep_json(other, tmp_path / "s")


# ---------------------------------------------------------------------------------------------
# The scripts, read (no cluster needed)
# ---------------------------------------------------------------------------------------------


def _between(text: str, start: str, end: str) -> str:
    i = text.index(start)
    return text[i : text.index(end, i)]


def test_scripts_parse_and_share_their_launch_code() -> None:
    for script in SCRIPTS:
        subprocess.run(["bash", "-n", str(script)], check=True)
    single, sweep = PCPP_SBATCH.read_text(), SWEEP_SBATCH.read_text()
    for start, end in [("# ---- launch", "# ---- end of launch"), ("# ===", "set -euo")]:
        assert _between(single, start, end) == _between(sweep, start, end)


def test_scripts_name_no_site() -> None:
    for script in (PCPP_SBATCH, SWEEP_SBATCH):
        directives = [ln for ln in script.read_text().splitlines() if ln.startswith("#SBATCH")]
        assert directives, script
        for line in directives:
            assert not re.search(r"--(account|partition|qos|reservation|nodelist)|\s-[Apq]\s", line)
        assert not re.search(r"/(home|work|scratch|users?)/\w", script.read_text())


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_scripts_pass_shellcheck() -> None:
    result = subprocess.run(
        ["shellcheck", "-s", "bash", *map(str, SCRIPTS)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


def test_the_job_script_refuses_to_run_outside_slurm(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    for script in (PCPP_SBATCH, SWEEP_SBATCH):
        result = subprocess.run(
            ["bash", str(script), str(TINY)], env=env, capture_output=True, text=True, cwd=tmp_path
        )
        assert result.returncode == 2
        assert "not inside a Slurm job" in result.stderr


# ---------------------------------------------------------------------------------------------
# Against a real Slurm cluster
# ---------------------------------------------------------------------------------------------

TERMINAL = {
    "COMPLETED",
    "FAILED",
    "TIMEOUT",
    "CANCELLED",
    "NODE_FAIL",
    "PREEMPTED",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
}
#: Small overrides that keep a tiny job short (the ranks' start-up dominates on 2 cores).
QUICK = [
    "--set",
    "generation.steps=3",
    "--set",
    "parallel.warmup_steps=1",
    "--set",
    "generation.height=128",
    "--no-progress",
]


def _cluster_problem() -> str | None:
    for command in ("sinfo", "sbatch", "scontrol", "srun"):
        if shutil.which(command) is None:
            return f"the Slurm command {command!r} is not installed"
    try:
        result = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, timeout=30
        )
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 30 s"
    if result.returncode != 0:
        return f"sinfo failed: {result.stderr.strip() or result.stdout.strip()}"
    states = result.stdout.split()
    if not any(s.rstrip("*~#").startswith(("idle", "mixed", "allocated")) for s in states):
        return f"no usable node (sinfo node states: {states or 'none'})"
    return None


@pytest.fixture(scope="module")
def slurm() -> None:
    problem = _cluster_problem()
    if problem is None:
        return
    message = (
        f"no Slurm cluster: {problem}. Start a one-node one with "
        "`bash tests/slurm/cluster.sh start` (root, Debian)"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}; CI=true: the Slurm tests must run, not skip")
    pytest.skip(message)


def _job_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PCPP_"))}
    # The ranks run as root on CI machines; Open MPI refuses that unless told (test only).
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    if sys.prefix != sys.base_prefix:
        env["PCPP_VENV"] = sys.prefix  # the script's ENVIRONMENT block activates it
    else:
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def _submit(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(
        ["sbatch", "--parsable", *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, f"sbatch failed: {result.stderr}"
    return result.stdout.strip().split(";")[0]


def _job_states(job_id: str) -> dict[str, tuple[str, str]]:
    """``{job or array task id: (state, exit code)}`` from ``scontrol`` (no accounting needed)."""
    result = subprocess.run(
        ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=30
    )
    states = {}
    for line in result.stdout.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        key = fields.get("ArrayTaskId", fields.get("JobId", "?"))
        states[key] = (fields.get("JobState", "?"), fields.get("ExitCode", "?"))
    return states


def _wait(job_id: str, timeout: float, logs: Path) -> dict[str, tuple[str, str]]:
    deadline = time.monotonic() + timeout
    states: dict[str, tuple[str, str]] = {}
    while time.monotonic() < deadline:
        states = _job_states(job_id)
        if states and all(state in TERMINAL for state, _ in states.values()):
            return states
        time.sleep(2)
    subprocess.run(["scancel", job_id], check=False)
    pytest.fail(f"job {job_id} not finished after {timeout} s: {states}\n{_logs(logs)}")


def _logs(directory: Path) -> str:
    text = []
    for path in sorted(directory.glob("slurm-*.out")):
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if _interesting(ln)]
        text.append(f"--- {path.name}\n" + "\n".join(lines[-40:]))
    return "\n".join(text)


def _interesting(line: str) -> bool:
    """Drop the wheel's PMIx help-file noise (see docs/SLURM.md)."""
    noise = ("Sorry!", "find-available", "help-pmix", "couldn't open the help", "-----")
    return not any(n in line for n in noise) and line.strip() != ""


def test_pcpp_sbatch_runs_tiny_on_two_tasks(slurm: None, tmp_path: Path) -> None:
    job_id = _submit(
        ["--ntasks=2", "--time=5", "--output=slurm-%j.out", str(PCPP_SBATCH), str(TINY), *QUICK],
        tmp_path,
        _job_env(),
    )
    states = _wait(job_id, 300, tmp_path)
    log = _logs(tmp_path)
    assert states[job_id] == ("COMPLETED", "0:0"), log
    run_dir = tmp_path / "runs" / job_id
    run = read_run(run_dir / "run.h5")
    assert run.status == "complete", log
    assert run.n_ranks == 2
    assert len(run.images) == 1 and run.images[0].array.shape == (128, 256, 3)
    assert (run_dir / "image-0000.png").is_file()
    assert "srun --ntasks=2" in log
    assert f"complete: runs/{job_id}/run.h5" in log


def test_sweep_array_job_and_collected_table(slurm: None, tmp_path: Path) -> None:
    sweep_file = _write_sweep(
        tmp_path,
        {
            "job": str(TINY),
            "set": {"generation.steps": 3, "parallel.warmup_steps": 1, "generation.height": 128},
            "points": [
                {"parallel.mode": "sync"},
                {"parallel.mode": "pcpp", "parallel.ratio": 0.5},
                {"parallel.mode": "sync", "ntasks": 4},
            ],
        },
    )
    job_id = _submit(
        ["--array=0-2", "--ntasks=2", "--time=5", str(SWEEP_SBATCH), str(sweep_file)],
        tmp_path,
        _job_env(),
    )
    states = _wait(job_id, 400, tmp_path)
    log = _logs(tmp_path)
    assert states.get("0") == ("COMPLETED", "0:0"), (states, log)
    assert states.get("1") == ("COMPLETED", "0:0"), (states, log)
    assert states.get("2") == ("FAILED", "2:0"), (states, log)

    sweep_dir = tmp_path / "runs" / f"sweep-{job_id}"
    result = subprocess.run(
        [*COLLECT, str(sweep_dir), "--format", "json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    points = json.loads(result.stdout)["points"]
    assert [p["status"] for p in points] == ["complete", "complete", "rejected"], log
    for point in points[:2]:
        assert point["exit_code"] == 0 and point["n_ranks"] == 2 and point["steps_done"] == 3
        assert point["bytes_sent"] > 0 and point["bytes_received"] > 0
        assert Path(point["image"]).is_file()
        assert point["wall_s"] > 0
    assert points[1]["settings"] == {"parallel.mode": "pcpp", "parallel.ratio": 0.5}
    assert "asks for 4 ranks" in points[2]["error"]
    # the second point really ran in its mode
    config = yaml.safe_load(read_run(sweep_dir / "point-0001" / "run.h5").config_yaml)
    assert config["parallel"]["mode"] == "pcpp" and config["parallel"]["ratio"] == 0.5


@pytest.mark.parametrize(
    ("launcher", "signal"),
    [("srun", "B:USR1@30"), ("mpirun", "USR1@30")],
    ids=["srun-batch-signal", "mpirun-step-signal"],
)
def test_time_limit_interrupts_the_run(
    slurm: None, tmp_path: Path, launcher: str, signal: str
) -> None:
    # Slurm limits are whole minutes and the warning may come up to 60 s early: with --time=2
    # and @30 it arrives 60-90 s after the start, after the ranks' ~30 s start-up. 900 steps
    # of the tiny model at 512 px take several minutes even on an idle machine (500 steps at
    # 256 px finished within the limit there).
    job_id = _submit(
        [
            "--ntasks=2",
            "--time=2",
            f"--signal={signal}",
            "--output=slurm-%j.out",
            str(PCPP_SBATCH),
            str(TINY),
            "--set",
            "generation.steps=900",
            "--set",
            "generation.height=512",
            "--set",
            "generation.width=512",
            "--no-progress",
        ],
        tmp_path,
        _job_env(PCPP_LAUNCHER=launcher),
    )
    states = _wait(job_id, 300, tmp_path)
    log = _logs(tmp_path)
    # exit 3 before the limit: FAILED with exit code 3, not TIMEOUT
    assert states[job_id] == ("FAILED", "3:0"), log
    run_dir = tmp_path / "runs" / job_id
    run = read_run(run_dir / "run.h5")
    assert run.status == "interrupted", log
    assert "SIGUSR1" in (run.error or ""), run.error
    assert run.images == []
    counts = []
    for rank in range(2):
        path = run_dir / rank_file_name(rank)
        assert read_rank_attrs(path)["status"] == "interrupted"
        steps = read_table(path, "steps")
        assert len(steps) >= 1, log
        assert list(steps["step"]) == list(range(len(steps)))
        traffic = read_traffic(path)
        assert set(traffic["step"]) == set(range(len(steps)))
        counts.append(len(steps))
    assert counts[0] == counts[1] < 900
    assert f"interrupted (exit 3): finished steps are in runs/{job_id}" in log
