#!/usr/bin/env python3
"""The quality study: parallel modes against ``single`` (PSNR, SSIM, captions, bytes per step).

    # the whole grid of docs/QUALITY.md (256 and 512 px, 2-4 ranks), resumable
    python tools/quality_study.py --out runs/quality

    # a subset: 256 px on 2 ranks, pcpp only, two ratios
    python tools/quality_study.py --out runs/q --sizes 256 --ranks 2 --modes pcpp \\
        --ratios 0.1,0.3 --warmups 4

    # only rebuild the tables and figures from the results already there
    python tools/quality_study.py --out runs/quality --report-only

    # the transformer (built-in tiny-pixart) in its own study directory
    python tools/quality_study.py --model tiny-pixart --out runs/quality-tiny-pixart \
        --sizes 256 --ranks 2,3 --ratios 0.1,0.3,0.5,1.0 --warmups 4 --prompts 8

Every grid point is one ``pcpp-mpi run`` (one ``mpirun`` launch, or one process for
``single``) that makes all of its size's prompts in one job: the caption-evaluation job of
``tools/check_captions.py`` (the fixed ``evaluation_prompts`` list, image ``i`` with seed
``seed + i``, DDIM, guidance 5, float32, the built-in ``--model`` on the CPU: ``tiny``, the
UNet, or ``tiny-pixart``, the transformer; give each model its own ``--out``). Each size has a
``single`` reference run with the same prompts and seeds. For every point the tool records

- PSNR and SSIM of each image against the ``single`` image of the same prompt and seed
  (``pcpp_mpi.analysis.compare``), their mean and worst value, and PSNR of the pooled MSE;
- caption accuracy (``pcpp_mpi.shapes.evaluation.check_run``: colour and grid cell right), and
  how many images the checker reads exactly as it reads the ``single`` image (same colour,
  same cell), which is more sensitive than the accuracy;
- bytes sent per denoising step, summed over the ranks, from the planner (``pcpp-mpi plan``:
  the mean over the image's steps, warm-up included, and a steady displaced step), and the
  same mean as the run's own traffic table recorded it (they must agree);
- the launch's wall time.

Grid (defaults): for every size and rank count ``sync`` (a control: it must equal ``single``),
``naive``, ``distrifusion`` (warm-up ``--default-warmup``), ``pcpp`` at every ``--ratios``
(warm-up ``--default-warmup``), and ``pcpp`` at ``--warmup-ratio`` with every ``--warmups``.
A warm-up of 0 is not allowed in the displaced modes (they need one exact step) and is skipped.

Output under ``--out``: ``runs/ID/`` (the run directories), ``logs/ID.log``,
``points/ID.json`` and ``points/ID.csv`` (one point: settings, figures, every image),
``results.csv``, ``results.json`` and ``results.md`` (all points), and ``quality.png``
(PSNR and SSIM against bytes per step, one column per size). A point whose ``points/ID.json``
exists with the same settings and the same weights file is skipped, so an interrupted study
resumes where it stopped; one made with other weights is run again.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from pcpp_mpi.shapes.evaluation import evaluation_job  # noqa: E402

MODES = ("sync", "naive", "distrifusion", "pcpp")
DISPLACED = ("distrifusion", "pcpp")
RESULT_FORMAT = 1
#: Verdict thresholds (decided before the study ran; see docs/QUALITY.md).
SAME_PSNR_DB = 40.0  # every image at least this close to single ...
SAME_SSIM = 0.99  # ... and at least this similar, and every caption reading identical
CLOSE_PSNR_DB = 30.0  # mean PSNR at least this: "close"
PSNR_PLOT_CAP = 60.0
#: Rough cost model of the development machine (2 CPU cores), for the estimate printed first.
SECONDS_PER_STEP_256 = {"tiny": 0.10, "tiny-pixart": 0.015}  # single, 256 px, CFG batch 2
STARTUP_S = 10.0  # interpreter, torch, model load, decode and files, per launch
RANK_SLOWDOWN = {1: 1.0, 2: 1.25, 3: 1.6, 4: 1.9}


# ----------------------------------------------------------------------------- the grid
@dataclass(frozen=True)
class Point:
    size: int
    ranks: int
    mode: str
    ratio: float | None = None  # pcpp only
    warmup: int | None = None  # displaced modes only

    @property
    def id(self) -> str:
        name = f"{self.size}px-{self.ranks}r-{self.mode}"
        if self.ratio is not None:
            name += f"-ratio{self.ratio:g}"
        if self.warmup is not None:
            name += f"-warm{self.warmup}"
        return name

    def overrides(self) -> dict[str, Any]:
        parallel: dict[str, Any] = {"mode": self.mode}
        if self.ratio is not None:
            parallel["ratio"] = self.ratio
        if self.warmup is not None:
            parallel["warmup_steps"] = self.warmup
        return parallel


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _prompt_counts(text: str) -> dict[int, int] | int:
    """``12`` (every size) or ``256:12,512:6`` (per size; others get the first count)."""
    if ":" not in text:
        return int(text)
    counts = {}
    for part in text.split(","):
        size, count = part.split(":")
        counts[int(size)] = int(count)
    return counts


def prompts_for(args: argparse.Namespace, size: int) -> int:
    counts = args.prompts
    if isinstance(counts, int):
        return counts
    return counts.get(size, next(iter(counts.values())))


def build_grid(args: argparse.Namespace) -> list[Point]:
    """The reference ``single`` of each size, then the points, without duplicates."""
    points: list[Point] = []
    for size in args.sizes:
        points.append(Point(size, 1, "single"))
        for ranks in args.ranks:
            for mode in args.modes:
                if mode in ("sync", "naive"):
                    points.append(Point(size, ranks, mode))
                elif mode == "distrifusion":
                    points.append(Point(size, ranks, mode, warmup=args.default_warmup))
                    for warmup in args.distrifusion_warmups:
                        points.append(Point(size, ranks, mode, warmup=warmup))
                else:
                    for ratio in args.ratios:
                        points.append(Point(size, ranks, mode, ratio, args.default_warmup))
                    for warmup in args.warmups:
                        points.append(Point(size, ranks, mode, args.warmup_ratio, warmup))
    unique: list[Point] = []
    for point in points:
        if point.warmup is not None and not 1 <= point.warmup <= args.steps:
            continue
        if point not in unique:
            unique.append(point)
    return unique


def point_job(args: argparse.Namespace, point: Point) -> dict[str, Any]:
    job = evaluation_job(
        point.size,
        prompts_for(args, point.size),
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        scheduler=args.scheduler,
        seed=args.seed,
        mode=point.mode,
        model=args.model,
    )
    job["parallel"] = point.overrides()
    return job


def settings(args: argparse.Namespace, point: Point, weights: dict[str, str]) -> dict[str, Any]:
    """What must match for a stored result to be reused."""
    return {
        "format": RESULT_FORMAT,
        "point": asdict(point),
        "job": point_job(args, point),
        "weights": weights,
    }


# ----------------------------------------------------------------------------- weights
def weights_signature(model: str = "tiny") -> dict[str, str]:
    """SHA-256 and training steps of the built-in ``model``'s weights file (the runs read
    this file): UNet steps for ``tiny``, transformer steps for ``tiny-pixart``."""
    if model == "tiny-pixart":
        from pcpp_mpi.models.tiny_pixart import WEIGHTS_PATH as path
        from pcpp_mpi.models.tiny_pixart import read_tiny_pixart_metadata

        meta = read_tiny_pixart_metadata(path)
        steps_key = "transformer_steps_done"
    else:
        from pcpp_mpi.models.tiny import WEIGHTS_PATH as path
        from pcpp_mpi.models.tiny import read_metadata

        meta = read_metadata(path)
        steps_key = "unet_steps_done"
    return {
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        steps_key: meta.get(steps_key, "?"),
        "vae_steps_done": meta.get("vae_steps_done", "?"),
    }


def denoiser_steps(weights: dict[str, str]) -> str:
    """The denoiser's training steps in a :func:`weights_signature`."""
    return weights.get("unet_steps_done", weights.get("transformer_steps_done", "?"))


def code_signature() -> str:
    """SHA-256 of the package's Python sources (recorded with each point, not compared)."""
    digest = hashlib.sha256()
    for path in sorted((REPO / "pcpp_mpi").rglob("*.py")):
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------- running
def _launcher(ranks: int) -> list[str]:
    cli = [sys.executable, "-m", "pcpp_mpi.cli"]
    if ranks == 1:
        return cli
    beside = Path(sys.executable).parent / "mpirun"
    mpirun = str(beside) if beside.exists() else shutil.which("mpirun")
    if mpirun is None:
        raise SystemExit("quality_study: no mpirun beside the interpreter or on PATH")
    command = [mpirun, "-np", str(ranks), "--oversubscribe", "--bind-to", "none"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-run-as-root")
    return [*command, "-x", "OMP_NUM_THREADS", *cli]


def run_point(args: argparse.Namespace, point: Point) -> tuple[int, float]:
    """Launch the point's job; returns the exit code and the wall time."""
    job_dir = args.out / "jobs"
    log_dir = args.out / "logs"
    job_dir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    job_file = job_dir / f"{point.id}.yaml"
    job_file.write_text(yaml.safe_dump(point_job(args, point), sort_keys=False))
    run_dir = args.out / "runs" / point.id
    command = [*_launcher(point.ranks), "run", str(job_file), "--out", str(run_dir)]
    command += ["--overwrite", "--no-progress"]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    if point.ranks > 1:
        env["OMP_NUM_THREADS"] = "1"  # one thread per rank: the ranks share the cores
    args.code_at_launch = code_signature()
    start = time.monotonic()
    with open(log_dir / f"{point.id}.log", "w") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        code = subprocess.call(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    return code, time.monotonic() - start


# ----------------------------------------------------------------------------- measuring
def plan_bytes(job_dict: dict[str, Any], ranks: int) -> dict[str, float]:
    """Bytes sent per step summed over all ranks, from the planner (gather excluded)."""
    from pcpp_mpi.config import job_from_dict
    from pcpp_mpi.planning import make_plan

    job = job_from_dict(job_dict)
    steps = job.generation.steps
    if ranks == 1:
        return {"plan_sent_per_step": 0.0, "plan_steady_step": 0, "plan_first_step": 0}
    plan = make_plan(job, ranks)
    mode = job.parallel.mode
    total = sum(plan.run_totals(r, mode)[0] - plan.final(r).total_sent for r in range(ranks))
    steady = sum(plan.step_traffic(r, mode, max(steps - 2, 0)).total_sent for r in range(ranks))
    first = sum(plan.step_traffic(r, mode, 0).total_sent for r in range(ranks))
    return {
        "plan_sent_per_step": total / steps,
        "plan_steady_step": steady,
        "plan_first_step": first,
    }


def _readings(run_dir: Path) -> list[dict[str, Any]]:
    from pcpp_mpi.shapes.evaluation import check_run

    out = []
    for item, check in check_run(run_dir):
        r = check.reading
        out.append(
            {
                "name": item.name,
                "prompt": item.prompt,
                "seed": item.seed,
                "ok": check.ok,
                "colour_ok": check.colour_ok,
                "position_ok": check.position_ok,
                "colour": r.colour,
                "cell": list(r.cell) if r.cell is not None else None,
                "kind": r.kind,
            }
        )
    return out


def _finite_mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def evaluate_point(
    args: argparse.Namespace, point: Point, wall_s: float, weights: dict[str, str]
) -> dict[str, Any]:
    from pcpp_mpi.analysis import load_run, summarize_run
    from pcpp_mpi.analysis.compare import compare_runs, load_run_images

    run_dir = args.out / "runs" / point.id
    reference = args.out / "runs" / Point(point.size, 1, "single").id
    run = load_run(run_dir)
    if run.status != "complete":
        raise RuntimeError(f"{run_dir}: status {run.status}")
    readings = _readings(run_dir)
    ref_readings = {r["name"]: r for r in _readings(reference)}
    comparison = compare_runs(load_run_images(reference), load_run_images(run_dir))
    images = []
    for figures, reading in zip(comparison.images, readings, strict=True):
        assert figures.name == reading["name"]
        ref = ref_readings[figures.name]
        same = reading["colour"] == ref["colour"] and reading["cell"] == ref["cell"]
        images.append(
            {
                **reading,
                "psnr_db": figures.psnr_db,
                "ssim": figures.ssim,
                "max_abs_diff": figures.max_abs_diff,
                "mean_abs_diff": figures.mean_abs_diff,
                "latent_max_abs_diff": figures.latent_max_abs_diff,
                "reading_as_single": same,
            }
        )
    psnrs = [i["psnr_db"] for i in images]
    mse = [(i["psnr_db"], 255.0**2 / 10 ** (i["psnr_db"] / 10)) for i in images]
    pooled_mse = float(np.mean([0.0 if math.isinf(p) else m for p, m in mse]))
    summary = summarize_run(run)
    job = point_job(args, point)
    result: dict[str, Any] = {
        "id": point.id,
        "model": args.model,
        **asdict(point),
        "prompts": len(images),
        "steps": args.steps,
        "images_identical": sum(math.isinf(p) for p in psnrs),
        "psnr_mean_db": _finite_mean([p for p in psnrs if not math.isinf(p)])
        if any(not math.isinf(p) for p in psnrs)
        else math.inf,
        "psnr_min_db": float(min(psnrs)),
        "psnr_pooled_db": math.inf if pooled_mse == 0 else 10 * math.log10(255.0**2 / pooled_mse),
        "ssim_mean": float(np.mean([i["ssim"] for i in images])),
        "ssim_min": float(min(i["ssim"] for i in images)),
        "max_abs_diff": float(max(i["max_abs_diff"] for i in images)),
        "caption_accuracy": float(np.mean([i["ok"] for i in images])),
        "caption_accuracy_single": float(np.mean([ref_readings[i["name"]]["ok"] for i in images])),
        "readings_as_single": float(np.mean([i["reading_as_single"] for i in images])),
        **plan_bytes(job, point.ranks),
        "measured_sent_per_step": float(summary.sent_per_step),
        "step_median_s": summary.step_median_s,
        "denoise_s": summary.denoise_s,
        "wall_s": wall_s,
        "weights_unet_steps": weights.get("unet_steps_done"),
        "weights_transformer_steps": weights.get("transformer_steps_done"),
        "code_sha256": getattr(args, "code_at_launch", None),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    result["verdict"] = verdict(result)
    return {"settings": settings(args, point, weights), "result": result, "images": images}


def verdict(result: dict[str, Any]) -> str:
    """``same``: every image >= SAME_PSNR_DB and SSIM >= SAME_SSIM and read as single's;
    ``close``: mean PSNR >= CLOSE_PSNR_DB; ``different`` otherwise."""
    if result["mode"] == "single":
        return "reference"
    if (
        result["psnr_min_db"] >= SAME_PSNR_DB
        and result["ssim_min"] >= SAME_SSIM
        and result["readings_as_single"] == 1.0
    ):
        return "same"
    if result["psnr_mean_db"] >= CLOSE_PSNR_DB:
        return "close"
    return "different"


# ----------------------------------------------------------------------------- files
CSV_FIELDS = [
    "id", "size", "ranks", "mode", "ratio", "warmup", "prompts", "steps",
    "plan_sent_per_step", "plan_steady_step", "plan_first_step", "measured_sent_per_step",
    "psnr_mean_db", "psnr_min_db", "psnr_pooled_db", "images_identical", "ssim_mean",
    "ssim_min", "max_abs_diff", "caption_accuracy", "caption_accuracy_single",
    "readings_as_single", "verdict", "step_median_s", "denoise_s", "wall_s",
    "weights_unet_steps", "weights_transformer_steps", "model",
]  # fmt: skip


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in CSV_FIELDS})


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def _dump(path: Path, data: Any) -> None:
    # inf is written as Infinity (Python's json reads it back)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=_json_default))
    tmp.replace(path)


def stored(args: argparse.Namespace, point: Point, weights: dict[str, str]) -> dict | None:
    path = args.out / "points" / f"{point.id}.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    expected = json.loads(json.dumps(settings(args, point, weights), default=_json_default))
    return data if data.get("settings") == expected else None


def load_results(out: Path) -> list[dict[str, Any]]:
    points = sorted((out / "points").glob("*.json")) if (out / "points").exists() else []
    rows = [json.loads(p.read_text())["result"] for p in points]
    order = {m: i for i, m in enumerate(("single", *MODES))}
    rows.sort(
        key=lambda r: (
            r["size"], r["ranks"], order.get(r["mode"], 9), r["ratio"] or 0, r["warmup"] or 0,
        )
    )  # fmt: skip
    return rows


def _fmt_db(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.1f}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = []
    for size in sorted({r["size"] for r in rows}):
        part = [r for r in rows if r["size"] == size]
        single = next((r for r in part if r["mode"] == "single"), None)
        count = part[0]["prompts"]
        lines.append(f"### {size} x {size} px ({count} prompts and seeds per point)\n")
        if single is not None:
            lines.append(
                f"`single` (the reference): caption accuracy {single['caption_accuracy']:.0%}\n"
            )
        lines.append(
            "| ranks | mode | ratio | warm-up | MiB/step (plan) | steady MiB/step | "
            "PSNR mean (dB) | PSNR min (dB) | SSIM mean | SSIM min | captions | "
            "read as single | verdict |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in part:
            if r["mode"] == "single":
                continue
            ratio = "" if r["ratio"] is None else f"{r['ratio']:g}"
            warmup = "" if r["warmup"] is None else r["warmup"]
            lines.append(
                f"| {r['ranks']} | {r['mode']} | {ratio} | {warmup} "
                f"| {r['plan_sent_per_step'] / 2**20:.2f} | {r['plan_steady_step'] / 2**20:.2f} "
                f"| {_fmt_db(r['psnr_mean_db'])} | {_fmt_db(r['psnr_min_db'])} "
                f"| {r['ssim_mean']:.4f} | {r['ssim_min']:.4f} "
                f"| {r['caption_accuracy']:.0%} | {r['readings_as_single']:.0%} | {r['verdict']} |"
            )
        lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- figure
COLOURS = {"sync": "black", "naive": "tab:red", "distrifusion": "tab:blue", "pcpp": "tab:green"}
MARKERS = {2: "o", 3: "s", 4: "^", 5: "D", 6: "v", 8: "P"}


def _sweeps(part: list[dict[str, Any]], default_warmup: int) -> list[tuple[str, list[dict]]]:
    """The pcpp ratio sweep and warm-up sweep of each rank count, in order (to draw as lines)."""
    lines = []
    for ranks in sorted({r["ranks"] for r in part}):
        pcpp = [r for r in part if r["mode"] == "pcpp" and r["ranks"] == ranks]
        by_ratio = sorted(
            (r for r in pcpp if r["warmup"] == default_warmup), key=lambda r: r["ratio"]
        )
        ratio = next((r["ratio"] for r in pcpp if r["warmup"] != default_warmup), None)
        by_warmup = sorted((r for r in pcpp if r["ratio"] == ratio), key=lambda r: r["warmup"])
        lines += [("-", by_ratio), (":", by_warmup)]
    return [(style, rows) for style, rows in lines if len(rows) > 1]


def plot(rows: list[dict[str, Any]], path: Path, default_warmup: int) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    rows = [r for r in rows if r["mode"] != "single"]
    sizes = sorted({r["size"] for r in rows})
    if not sizes:
        return
    fig = Figure(figsize=(7.0 * len(sizes), 10.0))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(sizes), squeeze=False)
    panels = (
        ("psnr_mean_db", "PSNR vs single, mean over the images (dB)"),
        ("ssim_mean", "SSIM vs single, mean over the images"),
    )
    for col, size in enumerate(sizes):
        part = [r for r in rows if r["size"] == size]
        for row_index, (key, label) in enumerate(panels):
            ax = axes[row_index][col]

            def xy(r: dict[str, Any], key: str = key) -> tuple[float, float]:
                y = r[key]
                if key == "psnr_mean_db" and (math.isinf(y) or y > PSNR_PLOT_CAP):
                    y = PSNR_PLOT_CAP
                return r["plan_sent_per_step"] / 2**20, y

            for style, line in _sweeps(part, default_warmup):
                points = [xy(r) for r in line]
                ax.plot(*zip(*points, strict=True), ls=style, lw=0.8, color=COLOURS["pcpp"])
                for r in (line[0], line[-1]):
                    sweep = r["warmup"] != default_warmup or style == ":"
                    note = f"w{r['warmup']}" if sweep else f"{r['ratio']:g}"
                    ax.annotate(
                        note,
                        xy(r),
                        textcoords="offset points",
                        xytext=(4, -9 if sweep else 3),
                        fontsize=7,
                        color=COLOURS["pcpp"],
                    )
            for r in part:
                sweep = r["mode"] in DISPLACED and r["warmup"] != default_warmup
                colour = COLOURS.get(r["mode"], "grey")
                ax.scatter(
                    *xy(r),
                    marker=MARKERS.get(r["ranks"], "o"),
                    # distrifusion drawn larger and behind: pcpp at ratio 1 on 2 ranks equals it
                    s=110 if r["mode"] == "distrifusion" else 46,
                    facecolors="none" if sweep else colour,
                    edgecolors=colour,
                    linewidths=1.3,
                    zorder=2 if r["mode"] == "distrifusion" else 3,
                )
            if key == "psnr_mean_db":
                ax.axhline(PSNR_PLOT_CAP, color="grey", lw=0.6, ls=":")
                ax.axhline(SAME_PSNR_DB, color="grey", lw=0.6, ls="--")
                ax.text(
                    0.0,
                    PSNR_PLOT_CAP,
                    f" >= {PSNR_PLOT_CAP:g} dB (drawn at {PSNR_PLOT_CAP:g})",
                    fontsize=7,
                    va="bottom",
                    color="grey",
                    transform=ax.get_yaxis_transform(),
                )
            ax.set_xlabel("MiB sent per denoising step, all ranks (plan, mean over the steps)")
            ax.set_ylabel(label)
            count = part[0]["prompts"]
            ax.set_title(f"{size} x {size} px, {count} images per point" if row_index == 0 else "")
            ax.grid(alpha=0.3)
    handles = [
        Line2D([], [], ls="", marker="o", color=c, label=m)
        for m, c in COLOURS.items()
        if any(r["mode"] == m for r in rows)
    ]
    handles += [
        Line2D([], [], ls="", marker=MARKERS.get(n, "o"), color="grey", label=f"{n} ranks")
        for n in sorted({r["ranks"] for r in rows})
    ]
    handles += [
        Line2D([], [], ls="-", lw=0.8, color=COLOURS["pcpp"], label="pcpp ratio sweep"),
        Line2D(
            [], [], ls=":", marker="o", mfc="none", color=COLOURS["pcpp"], label="warm-up sweep"
        ),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=8)
    fig.suptitle(
        "Quality against bytes sent (vs single, same prompts and seeds); "
        f"warm-up {default_warmup} unless marked wN",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    fig.savefig(path, dpi=110)


def plot_examples(out: Path, rows: list[dict[str, Any]], path: Path, image: int = 0) -> None:
    """Image ``image`` of a few settings side by side, at the largest rank count of each size."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from pcpp_mpi.analysis.files import read_images

    picks = (
        ("naive", None, None),
        ("distrifusion", None, None),
        ("pcpp", 0.1, None),
        ("pcpp", 0.3, None),
        ("pcpp", 1.0, None),
        ("pcpp", 0.3, 8),
    )
    lines = []
    for size in sorted({r["size"] for r in rows}):
        part = [r for r in rows if r["size"] == size]
        ranks = max(r["ranks"] for r in part)
        chosen = [r for r in part if r["mode"] == "single"]
        for mode, ratio, warmup in picks:
            chosen += [
                r
                for r in part
                if r["ranks"] == ranks
                and r["mode"] == mode
                and (ratio is None or r["ratio"] == ratio)
                and (r["warmup"] == warmup if warmup else r["warmup"] in (None, 4))
            ][:1]
        lines.append(chosen)
    if not lines:
        return
    width = max(len(line) for line in lines)
    fig = Figure(figsize=(2.2 * width, 2.75 * len(lines)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(lines), width, squeeze=False)
    for i, line in enumerate(lines):
        for j in range(width):
            ax = axes[i][j]
            ax.set_axis_off()
            if j >= len(line):
                continue
            r = line[j]
            images = read_images(out / "runs" / r["id"] / "run.h5")
            name = sorted(images)[min(image, len(images) - 1)]
            ax.imshow(images[name])
            title = r["mode"] if r["mode"] != "pcpp" else f"pcpp {r['ratio']:g}"
            if r["mode"] in DISPLACED and r["warmup"] != 4:
                title += f" w{r['warmup']}"
            if r["mode"] == "single":
                title += f" {r['size']} px\n(reference)"
            else:
                stored = json.loads((out / "points" / f"{r['id']}.json").read_text())
                psnr = next(x["psnr_db"] for x in stored["images"] if x["name"] == name)
                title += f", {r['ranks']} ranks\nthis image {_fmt_db(psnr)} dB"
            ax.set_title(title, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(path, dpi=85)


def report(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = load_results(args.out)
    if not rows:
        print("quality_study: no results yet", file=sys.stderr)
        return rows
    _write_csv(args.out / "results.csv", rows)
    _dump(args.out / "results.json", rows)
    (args.out / "results.md").write_text(markdown_table(rows))
    plot(rows, args.out / "quality.png", args.default_warmup)
    plot_examples(args.out, rows, args.out / "examples.png")
    print(f"wrote {args.out / 'results.csv'}, results.md, results.json, quality.png, examples.png")
    return rows


# ----------------------------------------------------------------------------- main
def estimate_seconds(args: argparse.Namespace, points: list[Point]) -> float:
    total = 0.0
    for point in points:
        images = prompts_for(args, point.size)
        per_step = SECONDS_PER_STEP_256[args.model] * (point.size / 256) ** 3
        slow = RANK_SLOWDOWN.get(point.ranks, 0.5 * point.ranks)
        total += STARTUP_S + images * args.steps * per_step * slow
    return total


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="study directory")
    parser.add_argument(
        "--model",
        default="tiny",
        choices=tuple(SECONDS_PER_STEP_256),
        help="built-in model: tiny (UNet) or tiny-pixart (transformer); one --out per model",
    )
    parser.add_argument("--sizes", type=_ints, default=[256, 512], help="e.g. 256,512")
    parser.add_argument("--ranks", type=_ints, default=[2, 3, 4], help="e.g. 2,3,4")
    parser.add_argument(
        "--modes", type=lambda s: s.split(","), default=list(MODES), help=",".join(MODES)
    )
    parser.add_argument("--ratios", type=_floats, default=[0.1, 0.2, 0.3, 0.5, 1.0])
    parser.add_argument(
        "--warmups", type=_ints, default=[1, 2, 4, 8], help="pcpp warm-up sweep (0 is skipped)"
    )
    parser.add_argument("--warmup-ratio", type=float, default=0.3, help="pcpp ratio of the sweep")
    parser.add_argument(
        "--distrifusion-warmups", type=_ints, default=[], help="extra distrifusion warm-ups"
    )
    parser.add_argument("--default-warmup", type=int, default=4, help="as jobs/tiny.yaml")
    parser.add_argument(
        "--prompts",
        type=_prompt_counts,
        default={256: 12, 512: 6},
        help="prompts (= images, seeds seed..seed+N-1) per point: N or SIZE:N,SIZE:N "
        "(default 256:12,512:6)",
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance-scale", type=float, default=5.0)
    parser.add_argument("--scheduler", default="ddim")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first image")
    parser.add_argument("--report-only", action="store_true", help="tables and figures only")
    parser.add_argument("--dry-run", action="store_true", help="print the grid and the estimate")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    unknown = [m for m in args.modes if m not in MODES]
    if unknown:
        raise SystemExit(f"quality_study: unknown mode(s) {unknown}; choose from {MODES}")
    if args.report_only:
        return 0 if report(args) else 1
    points = build_grid(args)
    weights = weights_signature(args.model)
    todo = [p for p in points if stored(args, p, weights) is None]
    estimate = estimate_seconds(args, todo)
    images = sum(prompts_for(args, p.size) for p in todo)
    print(
        f"quality study: {len(points)} points ({len(points) - len(todo)} already done), "
        f"{len(todo)} to run: {images} images of {args.steps} steps; weights: {args.model}, "
        f"{denoiser_steps(weights)} denoiser steps, sha256 {weights['sha256'][:12]}; "
        f"rough estimate {estimate / 60:.0f} min on a 2-core CPU",
        flush=True,
    )
    for size in args.sizes:
        print(f"  {size} px: {prompts_for(args, size)} prompts per point", flush=True)
    if args.dry_run:
        for p in points:
            print(f"  {'done' if p not in todo else 'todo'} {p.id}")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "points").mkdir(exist_ok=True)
    started = time.monotonic()
    failures = []
    for index, point in enumerate(points):
        if point not in todo:
            continue
        reference = Point(point.size, 1, "single")
        if point != reference and stored(args, reference, weights) is None:
            failures.append(point.id)
            print(f"[{index + 1}/{len(points)}] {point.id}: no reference run, skipped", flush=True)
            continue
        print(f"[{index + 1}/{len(points)}] {point.id} ...", end=" ", flush=True)
        code, wall = run_point(args, point)
        now = weights_signature(args.model)
        if now != weights:
            print("the weights file changed during the run; stopping (run again)", flush=True)
            return 1
        if code != 0:
            failures.append(point.id)
            print(f"exit {code} after {wall:.0f} s (log: {args.out / 'logs'}/{point.id}.log)")
            continue
        data = evaluate_point(args, point, wall, weights)
        _dump(args.out / "points" / f"{point.id}.json", data)
        _write_csv(args.out / "points" / f"{point.id}.csv", [data["result"]])
        r = data["result"]
        print(
            f"{wall:.0f} s: PSNR {_fmt_db(r['psnr_mean_db'])} dB (min {_fmt_db(r['psnr_min_db'])}),"
            f" SSIM {r['ssim_mean']:.4f}, captions {r['caption_accuracy']:.0%}, read as single "
            f"{r['readings_as_single']:.0%}, {r['plan_sent_per_step'] / 2**20:.2f} MiB/step "
            f"-> {r['verdict']}",
            flush=True,
        )
        if r["mode"] != "single" and abs(r["measured_sent_per_step"] - r["plan_sent_per_step"]) > (
            point.ranks
        ):
            print(
                f"  WARNING: recorded {r['measured_sent_per_step']:.0f} B/step differs from the "
                f"plan's {r['plan_sent_per_step']:.0f}",
                flush=True,
            )
    print(f"study time this call: {(time.monotonic() - started) / 60:.1f} min", flush=True)
    report(args)
    if failures:
        print(f"quality_study: {len(failures)} point(s) failed: {', '.join(failures)}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
