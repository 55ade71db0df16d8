"""The analysis tools on real traces: tiny jobs under ``mpirun -np 2`` and ``-np 3``.

Two launches in one session fixture (steps = 4): ``-np 2`` runs ``pcpp`` and ``sync``;
``-np 3`` runs ``pcpp`` and then a long ``pcpp`` job that the fixture kills with SIGKILL
(the whole ``mpirun`` process group) once every rank has written two steps: a real killed
job, whose partial trace every tool must still read.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import h5py
import numpy as np
import pytest
from mpi_launch import REPO, mpi_env, mpirun, mpirun_path
from synthetic_run import write_synthetic_run
from test_analysis import validate_trace_events

from pcpp_mpi.analysis.files import load_run
from pcpp_mpi.analysis.stats import group_exchanges
from pcpp_mpi.cli import main
from pcpp_mpi.config import load_job
from pcpp_mpi.plan.accounting import Traffic
from pcpp_mpi.plan.schedule import step_kind
from pcpp_mpi.planning import make_plan

pytestmark = pytest.mark.mpi

BASE = REPO / "tests" / "data_tiny_exact.yaml"
STEPS = 4
RUNS = {
    2: {
        "pcpp": ["parallel.mode=pcpp", f"generation.steps={STEPS}"],
        "sync": [f"generation.steps={STEPS}"],
    },
    3: {
        "pcpp": ["parallel.mode=pcpp", f"generation.steps={STEPS}"],
        "killed": ["parallel.mode=pcpp", "generation.steps=200"],
    },
}
#: Every ``pcpp-mpi`` subcommand, and the sweep's own subcommands.
SUBCOMMANDS = (
    ["run"],
    ["plan"],
    ["info"],
    ["summary"],
    ["timeline"],
    ["perfetto"],
    ["compare"],
    ["sweep"],
    *(["sweep", step] for step in ("list", "array", "start", "finish", "collect")),
)
#: The scripts left in tools/ that the tests run here (benchmarks and the quality study).
SCRIPTS = ("bench_tracing", "quality_study")
#: The installed entry point (console script) next to this Python.
PCPP_MPI = Path(sys.executable).parent / "pcpp-mpi"


def command(name: str, argv: list[str]) -> int:
    """``pcpp-mpi NAME ARGV...`` in this process (its exit code)."""
    return main([name, *argv])


def installed(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``pcpp-mpi ARGV...`` through the installed entry point, from ``cwd``, without PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [str(PCPP_MPI), *argv], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def _spec(root: Path, n: int, runs: dict[str, list[str]]) -> Path:
    spec = root / f"np{n}.json"
    spec.write_text(json.dumps({"base": str(BASE), "out": str(root / f"np{n}"), "runs": runs}))
    return spec


def _steps_written(path: Path) -> int:
    try:
        with h5py.File(path, "r", locking=False) as file:
            return int(file["steps"].shape[0])
    except (OSError, KeyError):
        return 0


def _launch_and_kill(root: Path) -> None:
    """``-np 3``: the complete run, then SIGKILL the job two steps into the long one."""
    driver = [sys.executable, str(REPO / "tests" / "mpi_driver.py"), str(_spec(root, 3, RUNS[3]))]
    command = [mpirun_path(), "-np", "3", "--oversubscribe", "--bind-to", "none", *driver]
    killed = root / "np3" / "killed"
    process = subprocess.Popen(
        command,
        env=mpi_env(),
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 400
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if all(_steps_written(killed / f"rank-{r:04d}.h5") >= 2 for r in range(3)):
                break
            time.sleep(0.2)
        assert process.poll() is None, "the job ended before it could be killed"
        assert time.monotonic() < deadline, "the long job never wrote two steps"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        output = process.communicate(timeout=60)[0]
    assert (root / "np3" / "pcpp" / "run.h5").exists(), output[-3000:]


@pytest.fixture(scope="session")
def real(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root holding ``np2/{pcpp,sync}`` and ``np3/{pcpp,killed}``."""
    root = tmp_path_factory.mktemp("tools")
    driver = REPO / "tests" / "mpi_driver.py"
    result = mpirun(2, [sys.executable, str(driver), str(_spec(root, 2, RUNS[2]))])
    assert result.returncode == 0, result.stderr[-5000:]
    _launch_and_kill(root)
    return root


COMPLETE = [(2, "pcpp"), (2, "sync"), (3, "pcpp")]


# ----------------------------------------------------------------------------- the traces
def _traced_bytes(run_dir: Path, rank: int) -> dict[tuple[int, str], tuple[int, int]]:
    rows = load_run(run_dir).ranks[rank].exchanges
    out: dict[tuple[int, str], tuple[int, int]] = {}
    for row in rows:
        key = (int(row["step"]), str(row["kind"]))
        sent, received = out.get(key, (0, 0))
        out[key] = (sent + int(row["sent"]), received + int(row["received"]))
    return out


def _planned_bytes(n: int, name: str, rank: int, steps: range, decoded: bool = True) -> dict:
    plan = make_plan(load_job(BASE, RUNS[n][name]), n)
    expected = {}
    for step in steps:
        traffic = plan.step_traffic(rank, plan.layout.mode, step)
        for kind in set(traffic.sent) | set(traffic.received):
            expected[(step, kind)] = (traffic.sent.get(kind, 0), traffic.received.get(kind, 0))
    # the parallel VAE decode of a finished image is traced (the latent gather is not)
    decode = plan.decode(rank) if decoded else Traffic()
    for kind in set(decode.sent) | set(decode.received):
        expected[(steps[-1], kind)] = (decode.sent.get(kind, 0), decode.received.get(kind, 0))
    return expected


@pytest.mark.parametrize(("n", "name"), COMPLETE)
def test_traced_bytes_equal_the_plan(real: Path, n: int, name: str) -> None:
    """Every exchange row's bytes, summed per step and kind, equal ``plan``'s prediction."""
    for rank in range(n):
        traced = _traced_bytes(real / f"np{n}" / name, rank)
        assert traced == _planned_bytes(n, name, rank, range(STEPS)), f"rank {rank}"


@pytest.mark.parametrize(("n", "name"), COMPLETE)
def test_every_step_is_traced(real: Path, n: int, name: str) -> None:
    run = load_run(real / f"np{n}" / name)
    job = load_job(BASE, RUNS[n][name])
    assert run.status == "complete" and len(run.ranks) == n and not run.notes()
    for trace in run.ranks:
        assert trace.status == "complete" and trace.peak_memory_bytes > 0
        assert [int(s) for s in trace.steps["step"]] == list(range(STEPS))
        kinds = [step_kind(s, STEPS, run.mode, job.parallel.warmup_steps) for s in range(STEPS)]
        assert trace.steps["kind"].tolist() == kinds
        assert {"model_load", "setup", "denoise", "gather"} <= set(trace.phases["name"].tolist())
        # a step's exposed_comm is the sum of the waits completed in it
        exchanges = group_exchanges(trace.exchanges)
        assert exchanges.pending == 0
        for row in trace.steps:
            waits = exchanges.exposed[exchanges.waited_in_step == row["step"]].sum()
            assert row["exposed_comm"] == pytest.approx(waits, abs=1e-9)


# ----------------------------------------------------------------------------- the tools
def test_summary_on_real_runs(real: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = [str(real / "np2" / "pcpp"), str(real / "np3" / "pcpp")]
    assert command("summary", [*runs, "--baseline", str(real / "np2" / "sync"), "--json"]) == 0
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert "is a 'sync' run, not 'single'" in captured.err
    for run, n in zip(document["runs"], (2, 3), strict=True):
        assert run["n_ranks"] == n and run["steps_common"] == STEPS and run["status"] == "complete"
        assert 0.0 <= run["overlap_efficiency"] <= 1.0 and run["load_imbalance"] >= 1.0
        assert run["speedup_step"] > 0 and len(run["ranks"]) == n
        plan = make_plan(load_job(BASE, RUNS[n]["pcpp"]), n)
        for rank in run["ranks"]:
            sent, _ = plan.run_totals(rank["rank"], "pcpp")
            gather = plan.final(rank["rank"]).total_sent  # latent gather and decode
            by_kind = sum(
                v for k, v in rank.items() if k.startswith("sent_per_step_") and k[14:] != "bytes"
            )
            assert by_kind == rank["sent_per_step_bytes"]
            assert by_kind == pytest.approx((sent - gather) / STEPS, abs=1)
    assert command("summary", [*runs]) == 0
    text = capsys.readouterr().out
    assert "first step excluded" in text and "runs side by side" in text
    assert command("summary", [runs[0], "--csv"]) == 0
    assert capsys.readouterr().out.startswith("run,mode,run_status,rank,")


def test_timeline_on_real_runs(real: Path, tmp_path: Path) -> None:
    from PIL import Image

    for n in (2, 3):
        out = tmp_path / f"np{n}.png"
        assert command("timeline", [str(real / f"np{n}" / "pcpp"), "-o", str(out), "--phases"]) == 0
        with Image.open(out) as image:
            assert image.format == "PNG"
    zoom = tmp_path / "zoom.png"
    assert command("timeline", [str(real / "np2" / "pcpp"), "-o", str(zoom), "--steps", "2:4"]) == 0
    assert command("timeline", [str(real / "np2" / "pcpp"), "-o", str(zoom), "--steps", "9:"]) == 1


def test_perfetto_on_real_runs(real: Path, tmp_path: Path) -> None:
    for n in (2, 3):
        out = tmp_path / f"np{n}.json"
        assert command("perfetto", [str(real / f"np{n}" / "pcpp"), "-o", str(out)]) == 0
        document = json.loads(out.read_text())
        counts = validate_trace_events(document)
        info = document["otherData"]
        assert info["unmatched_sends"] == "0" and info["unmatched_receives"] == "0"
        assert counts["s"] == int(info["matched"]) > 0
        assert {e["pid"] for e in document["traceEvents"]} == set(range(n))


def test_compare_on_real_runs(
    real: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "diff.png"
    a, b = str(real / "np2" / "pcpp"), str(real / "np3" / "pcpp")
    assert command("compare", [a, b, "--png", str(png), "--json"]) == 0
    image = json.loads(capsys.readouterr().out)["images"][0]
    assert image["height"] == 160 and image["width"] == 128 and png.exists()
    assert 0.0 < image["ssim"] <= 1.0 and image["latent_max_abs_diff"] is not None
    assert command("compare", [a, str(real / "np2" / "pcpp"), "--no-png"]) == 0
    assert "inf (identical)" in capsys.readouterr().out
    other = tmp_path / "other"
    write_synthetic_run(other, 1, 2)
    from pcpp_mpi.output import RunFile

    with h5py.File(other / "run.h5", "r+") as file:
        file["images"].create_dataset("image-0000", data=np.zeros((64, 48, 3), np.uint8))
    assert RunFile  # the synthetic run file was written by RunFile
    assert command("compare", [a, str(other), "--no-png"]) == 1
    assert "A is 160x128 (H x W), B is 64x48 (H x W)" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the killed job
def test_killed_job_leaves_a_readable_partial_trace(
    real: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    killed = real / "np3" / "killed"
    run = load_run(killed)
    assert run.status == "running" and len(run.ranks) == 3
    finished = min(len(t.steps) for t in run.ranks)
    assert 2 <= finished < 200
    for trace in run.ranks:
        assert trace.status == "running" and trace.peak_memory_bytes is None
        steps = [int(s) for s in trace.steps["step"]]
        assert steps == list(range(len(steps)))
    # the bytes of the steps every rank finished equal the plan (exchanges waited by then)
    for rank in range(3):
        traced = _traced_bytes(killed, rank)
        planned = _planned_bytes(3, "killed", rank, range(finished - 1), decoded=False)
        assert {k: v for k, v in traced.items() if k[0] < finished - 1} == planned

    assert command("summary", [str(killed)]) == 0
    text = capsys.readouterr().out
    assert "status running" in text and "NOTE: run status is 'running'" in text
    assert "of 200 expected" in text
    png = tmp_path / "killed.png"
    assert command("timeline", [str(killed), "-o", str(png)]) == 0
    assert "status running" in capsys.readouterr().out and png.exists()
    trace_json = tmp_path / "killed.json"
    assert command("perfetto", [str(killed), "-o", str(trace_json)]) == 0
    validate_trace_events(json.loads(trace_json.read_text()))
    assert command("compare", [str(killed), str(real / "np3" / "pcpp")]) == 1
    assert "holds 0 image(s)" in capsys.readouterr().err


# ----------------------------------------------------------------------------- refusals, help
def test_every_tool_refuses_an_unknown_schema_version(
    real: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    future = tmp_path / "future"
    shutil.copytree(real / "np2" / "pcpp", future)
    with h5py.File(future / "run.h5", "r+") as file:
        file.attrs["schema_version"] = 99
    calls = {
        "summary": [str(future)],
        "timeline": [str(future), "-o", str(tmp_path / "t.png")],
        "perfetto": [str(future), "-o", str(tmp_path / "t.json")],
        "compare": [str(future), str(real / "np2" / "pcpp")],
    }
    for name, argv in calls.items():
        assert command(name, argv) == 1, name
        err = capsys.readouterr().err
        assert "unsupported file" in err and "schema version 99" in err, name


@pytest.mark.parametrize("argv", SUBCOMMANDS, ids=" ".join)
def test_every_subcommand_has_help_through_the_installed_entry_point(
    argv: list[str], tmp_path: Path
) -> None:
    """Run from outside the checkout: nothing may depend on tools/ or the repository layout."""
    done = installed(*argv, "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: pcpp-mpi {' '.join(argv)}")


def test_summary_and_compare_through_the_installed_entry_point(real: Path, tmp_path: Path) -> None:
    a, b = real / "np2" / "pcpp", real / "np3" / "pcpp"
    done = installed("summary", str(a), str(b), "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert [r["n_ranks"] for r in json.loads(done.stdout)["runs"]] == [2, 3]
    done = installed("compare", str(a), str(b), "--png", "diff.png", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "image-0000 (160x128): PSNR" in done.stdout and (tmp_path / "diff.png").is_file()
    done = installed("summary", str(tmp_path / "nothing"), cwd=tmp_path)
    assert done.returncode == 1 and done.stderr.startswith("pcpp-mpi summary: error:")


def test_the_timeline_parser_repeats_the_timeline_constant() -> None:
    from pcpp_mpi.analysis import timeline
    from pcpp_mpi.commands import analysis

    assert analysis.DETAIL_MAX_RANKS == timeline.DETAIL_MAX_RANKS


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_has_help(name: str) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "tools" / f"{name}.py"), "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 0 and "usage:" in done.stdout


# ----------------------------------------------------------------------------- quality study
def _study() -> ModuleType:
    """tools/quality_study.py, registered in sys.modules (its dataclasses need that)."""
    name = "tool_quality_study"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "tools" / "quality_study.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_quality_study_grid_skips_warmup_zero_and_duplicates() -> None:
    study = _study()
    args = study._parser().parse_args(["--out", "x", "--warmups", "0,1,4", "--sizes", "256"])
    ids = [p.id for p in study.build_grid(args)]
    assert ids[0] == "256px-1r-single" and len(ids) == len(set(ids))
    assert "256px-2r-pcpp-ratio0.3-warm4" in ids and "256px-4r-pcpp-ratio0.3-warm1" in ids
    assert not any(i.endswith("-warm0") for i in ids)
    # per rank count: sync, naive, distrifusion, 5 ratios, warm-ups 1 (4 is a ratio point)
    assert len(ids) == 1 + 3 * 9
    assert study.prompts_for(args, 256) == 12 and study.prompts_for(args, 512) == 6


def test_quality_study_on_a_tiny_grid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """single + sync at 64 px, 2 ranks, 1 prompt, 2 steps: sync equals single, bytes = plan."""
    study = _study()
    out = tmp_path / "quality"
    argv = ["--out", str(out), "--sizes", "64", "--ranks", "2", "--modes", "sync"]
    argv += ["--prompts", "1", "--steps", "2", "--default-warmup", "1"]
    assert study.main(argv) == 0
    rows = {r["id"]: r for r in json.loads((out / "results.json").read_text())}
    assert set(rows) == {"64px-1r-single", "64px-2r-sync"}
    single, sync = rows["64px-1r-single"], rows["64px-2r-sync"]
    assert single["verdict"] == "reference" and single["psnr_mean_db"] == float("inf")
    assert sync["psnr_min_db"] > 60 and sync["ssim_min"] > 0.999 and sync["verdict"] == "same"
    assert sync["readings_as_single"] == 1.0 and sync["prompts"] == 1
    plan = make_plan(load_job(out / "jobs" / "64px-2r-sync.yaml"), 2)
    per_step = sum(plan.run_totals(r, "sync")[0] - plan.final(r).total_sent for r in range(2))
    assert sync["plan_sent_per_step"] == per_step / 2 > 0
    assert sync["measured_sent_per_step"] == pytest.approx(sync["plan_sent_per_step"], abs=2)
    for name in ("results.csv", "results.md", "quality.png", "examples.png"):
        assert (out / name).stat().st_size > 0, name
    point = json.loads((out / "points" / "64px-2r-sync.json").read_text())
    assert len(point["images"]) == 1 and point["settings"]["weights"]["sha256"]
    assert (out / "points" / "64px-2r-sync.csv").read_text().startswith("id,size,ranks,mode")
    # resumable: a second call finds both points done and launches nothing
    capsys.readouterr()
    assert study.main(argv) == 0
    assert "(2 already done), 0 to run" in capsys.readouterr().out
