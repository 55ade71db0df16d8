"""``pcpp-mpi plan`` through pcpp_mpi.cli.main: text, JSON and rejected jobs (no MPI needed)."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import pcpp_mpi
from pcpp_mpi.cli import EXIT_OK, EXIT_REJECTED, main

REPO_ROOT = Path(pcpp_mpi.__file__).resolve().parents[1]
TINY_JOB = str(REPO_ROOT / "jobs" / "tiny.yaml")
SD15_JOB = str(REPO_ROOT / "jobs" / "sd15-local.yaml")


def plan_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert main(["plan", TINY_JOB, "--json", *args]) == EXIT_OK
    return json.loads(capsys.readouterr().out)


def test_plan_text_three_ranks(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", TINY_JOB, "--ranks", "3"]) == EXIT_OK
    captured = capsys.readouterr()
    assert captured.err == ""
    out = captured.out
    assert out.startswith("3 rank(s): 3 band(s) x 1 CFG group(s); latent 32x32, 3 levels")
    # 32 latent rows = 8 units of 4: bands of 3, 3, 2 units
    assert re.findall(r"rank +(\d+) band +(\d+) cfg (\d)", out) == [
        ("0", "0", "0"),
        ("1", "1", "0"),
        ("2", "2", "0"),
    ]
    assert "L0 [0,12)" in out and "L0 [12,24)" in out and "L0 [24,32)" in out
    assert "L2 [6,8)" in out
    assert "rank   3" not in out


def test_plan_json_bands_tile_the_latent(capsys: pytest.CaptureFixture[str]) -> None:
    data = plan_json(capsys, "--ranks", "3")
    assert data["ranks"] == 3 and data["cfg_groups"] == 1
    assert data["latent"] == [32, 32]  # 256 px / VAE scale 8
    assert (data["levels"], data["unit"]) == (3, 4)
    assert data["bands"] == [[0, 12], [12, 24], [24, 32]]
    assert data["layers"] == {"halo_convs": 28, "group_norms": 30, "self_attentions": 7}
    per_rank = data["per_rank"]
    assert [r["rank"] for r in per_rank] == [0, 1, 2]
    for level in range(data["levels"]):
        rows = [r["levels"][level]["rows"] for r in per_rank]
        assert rows[0][0] == 0
        assert rows[-1][1] == data["latent"][0] >> level
        for above, below in itertools.pairwise(rows):
            assert above[1] == below[0]
    # ratio 0.3 of the neighbours' level-0 bands of 12 and 8 rows: ceil(3.6) = 4, ceil(2.4) = 3
    assert per_rank[1]["levels"][0]["pcpp_rows_from_up"] == 4
    assert per_rank[1]["levels"][0]["pcpp_rows_from_down"] == 3
    assert per_rank[0]["levels"][0]["pcpp_rows_from_up"] == 0
    assert per_rank[2]["levels"][0]["pcpp_rows_from_down"] == 0
    # naive sends nothing per step; pcpp's steady step sends less than distrifusion's
    for rank in per_rank:
        modes = rank["modes"]
        assert modes["naive"]["first_step"]["sent"] == {}
        assert modes["naive"]["steady_step"]["sent"] == {}
        assert modes["sync"]["first_step"] == modes["distrifusion"]["first_step"]
        pcpp_kv = modes["pcpp"]["steady_step"]["sent"]["kv"]
        assert 0 < pcpp_kv < modes["distrifusion"]["steady_step"]["sent"]["kv"]


def test_plan_json_cfg_parallel(capsys: pytest.CaptureFixture[str]) -> None:
    data = plan_json(capsys, "--ranks", "4", "--set", "parallel.cfg_parallel=true")
    assert data["cfg_groups"] == 2
    assert data["bands"] == [[0, 16], [16, 32]]
    assert [(r["band"], r["cfg_group"]) for r in data["per_rank"]] == [
        (0, 0),
        (1, 0),
        (0, 1),
        (1, 1),
    ]


@pytest.mark.parametrize("ranks", [1, 5, 8])
def test_plan_json_any_rank_count(capsys: pytest.CaptureFixture[str], ranks: int) -> None:
    data = plan_json(capsys, "--ranks", str(ranks))
    bands = data["bands"]
    assert len(bands) == ranks
    assert bands[0][0] == 0 and bands[-1][1] == 32
    sizes = [stop - start for start, stop in bands]
    assert all(size % 4 == 0 for size in sizes) and max(sizes) - min(sizes) <= 4


def test_plan_too_many_ranks(capsys: pytest.CaptureFixture[str]) -> None:
    # 256 px -> 32 latent rows -> 8 units of 4 rows: at most 8 ranks
    assert main(["plan", TINY_JOB, "--ranks", "9"]) == EXIT_REJECTED
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "at most 8 ranks" in captured.err
    assert "9 ranks" in captured.err


def test_plan_missing_model_folder(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    code = main(["plan", SD15_JOB, "--ranks", "2", "--set", f"model.path={missing}"])
    assert code == EXIT_REJECTED
    captured = capsys.readouterr()
    assert captured.out == ""
    assert str(missing) in captured.err


def test_plan_sd15_job_as_shipped(capsys: pytest.CaptureFixture[str]) -> None:
    folder = "/models/stable-diffusion-v1-5"  # the job's model.path
    if Path(folder).exists():
        pytest.skip(f"{folder} exists on this machine")
    assert main(["plan", SD15_JOB, "--ranks", "2"]) == EXIT_REJECTED
    assert folder in capsys.readouterr().err


def test_plan_height_not_multiple_of_pixel_unit(capsys: pytest.CaptureFixture[str]) -> None:
    # tiny: VAE scale 8 x band unit 4 = 32 px
    code = main(["plan", TINY_JOB, "--ranks", "2", "--set", "generation.height=200"])
    assert code == EXIT_REJECTED
    err = capsys.readouterr().err
    assert "generation.height" in err
    assert "32 px" in err
    assert "use 192 or 224" in err


def test_plan_height_below_pixel_unit_suggests_the_smallest_size(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # 16 px passes the loader (a multiple of 8) but is below the tiny model's 32 px unit
    code = main(["plan", TINY_JOB, "--ranks", "1", "--set", "generation.height=16"])
    assert code == EXIT_REJECTED
    err = capsys.readouterr().err
    assert "use 32 (the smallest size) or more" in err
    assert "use 32 or 32" not in err


def test_plan_absurd_step_count_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["plan", TINY_JOB, "--ranks", "2", "--set", "generation.steps=1000000000"])
    assert code == EXIT_REJECTED
    assert "generation.steps: must be <= 10000, got 1000000000" in capsys.readouterr().err


def test_plan_needs_no_mpi_library(tmp_path: Path) -> None:
    """On a login node without ``libmpi`` mpi4py cannot be imported: ``plan`` still works."""
    shim = tmp_path / "shim" / "mpi4py"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text(
        'raise ImportError("libmpi.so.40: cannot open shared object file (test shim)")\n'
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(shim.parent), str(REPO_ROOT)]))
    result = subprocess.run(
        [sys.executable, "-m", "pcpp_mpi.cli", "plan", TINY_JOB, "--ranks", "2", "--json"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == EXIT_OK, result.stderr[-3000:]
    assert json.loads(result.stdout)["bands"] == [[0, 16], [16, 32]]
    # the shim really hides mpi4py from that interpreter
    probe = subprocess.run(
        [sys.executable, "-c", "import mpi4py"], env=env, capture_output=True, text=True
    )
    assert probe.returncode != 0 and "test shim" in probe.stderr


def test_plan_needs_no_mpi4py() -> None:
    """``plan`` works where mpi4py cannot be imported and starts no MPI (torch is fine: it
    traces the layer inventory)."""
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules["mpi4py"] = None  # any import of mpi4py now raises ImportError
        from pcpp_mpi.cli import main
        code = main(["plan", {TINY_JOB!r}, "--ranks", "4", "--json"])
        above = [["pcpp_mpi", "comm"], ["pcpp_mpi", "engine"]]
        loaded = [m for m in sys.modules if m.split(".")[:2] in above]
        assert code == 0 and not loaded, (code, loaded)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ranks"] == 4
