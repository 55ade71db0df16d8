#!/usr/bin/env python3
"""Check that images show what their captions say (colour and 3 x 3 position of the shape).

    # the caption-accuracy measurement of docs/TINY_MODEL.md: 36 fixed prompts, seeds 0..35,
    # one `pcpp-mpi run` on one rank (mode single), then the checks
    python tools/check_captions.py eval --size 256 --out runs/captions-256
    python tools/check_captions.py eval --size 256 --model tiny-pixart --out runs/captions-tp-256

    # the same prompts with another mode on several ranks (extra settings via --set)
    python tools/check_captions.py eval --size 512 --ranks 2 --set parallel.mode=pcpp \
        --out runs/captions-512-pcpp

    python tools/check_captions.py check runs/tiny [RUN_DIR ...]     # images of finished runs
    python tools/check_captions.py check image.png --caption "a red circle at the top left"
    python tools/check_captions.py job --size 256 > captions.yaml    # just the job file

A check passes when the colour and the grid cell read from the image equal the caption's; the
shape's kind is reported too but is not part of the headline accuracy. ``--json FILE`` writes
every reading. The importable functions are in :mod:`pcpp_mpi.shapes.checker` and
:mod:`pcpp_mpi.shapes.evaluation`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from pcpp_mpi.models import BUILTIN_NETWORKS  # noqa: E402
from pcpp_mpi.shapes.checker import Check, accuracy, check_caption  # noqa: E402
from pcpp_mpi.shapes.evaluation import check_run, evaluation_job  # noqa: E402


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def job_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--size", type=int, default=256, help="image height and width (px)")
        p.add_argument("--count", type=int, default=36, help="number of prompts (and seeds)")
        p.add_argument("--steps", type=int, default=20)
        p.add_argument("--guidance-scale", type=float, default=5.0)
        p.add_argument("--scheduler", default="ddim")
        p.add_argument("--seed", type=int, default=0, help="seed of the first image")
        p.add_argument(
            "--model", default="tiny", choices=tuple(BUILTIN_NETWORKS), help="built-in model"
        )

    job = sub.add_parser("job", help="print the evaluation job as YAML")
    job_options(job)

    evaluate = sub.add_parser("eval", help="run the evaluation job with pcpp-mpi, then check")
    job_options(evaluate)
    evaluate.add_argument("--out", type=Path, required=True, help="run directory")
    evaluate.add_argument("--ranks", type=int, default=1, help="MPI ranks (1: no mpirun)")
    evaluate.add_argument("--set", dest="overrides", action="append", default=[])
    evaluate.add_argument("--overwrite", action="store_true")
    evaluate.add_argument("--json", type=Path, help="write every reading here")
    evaluate.add_argument("--quiet", action="store_true", help="summary only")

    check = sub.add_parser("check", help="check run directories or image files")
    check.add_argument("paths", nargs="+", type=Path, help="run directories or image files")
    check.add_argument("--caption", help="the caption of image files")
    check.add_argument("--json", type=Path, help="write every reading here")
    check.add_argument("--quiet", action="store_true", help="summary only")
    return parser


def _job(args: argparse.Namespace) -> dict:
    return evaluation_job(
        args.size,
        args.count,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        scheduler=args.scheduler,
        seed=args.seed,
        model=args.model,
    )


def _pcpp_command(ranks: int) -> list[str]:
    cli = [sys.executable, "-m", "pcpp_mpi.cli"]
    if ranks == 1:
        return cli
    mpirun = Path(sys.executable).parent / "mpirun"
    launcher = str(mpirun) if mpirun.exists() else shutil.which("mpirun")
    if launcher is None:
        raise SystemExit("check_captions: no mpirun beside the interpreter or on PATH")
    return [launcher, "-np", str(ranks), "--oversubscribe", "--bind-to", "none", *cli]


def _run_evaluation(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        job_file = Path(tmp) / "captions.yaml"
        job_file.write_text(yaml.safe_dump(_job(args), sort_keys=False))
        command = [*_pcpp_command(args.ranks), "run", str(job_file), "--out", str(args.out)]
        command.append("--no-progress")
        command += [f"--set={override}" for override in args.overrides]
        if args.ranks == 1 and not any(o.startswith("parallel.mode") for o in args.overrides):
            command.append("--set=parallel.mode=single")
        if args.overwrite:
            command.append("--overwrite")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        print("$", " ".join(command), file=sys.stderr, flush=True)
        code = subprocess.call(command, env=env)
    if code != 0:
        print(f"check_captions: pcpp-mpi run exited with {code}", file=sys.stderr)
        return code
    return _report([c for _, c in check_run(args.out)], args.json, args.quiet, [str(args.out)])


def _load_image(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _check_paths(args: argparse.Namespace) -> int:
    checks: list[Check] = []
    for path in args.paths:
        if path.is_dir():
            checks += [c for _, c in check_run(path)]
        else:
            if args.caption is None:
                raise SystemExit(f"check_captions: {path} is an image; give its --caption")
            checks.append(check_caption(_load_image(path), args.caption))
    return _report(checks, args.json, args.quiet, [str(p) for p in args.paths])


def _report(checks: list[Check], json_path: Path | None, quiet: bool, sources: list[str]) -> int:
    if not checks:
        print("check_captions: no images found", file=sys.stderr)
        return 1
    if not quiet:
        for check in checks:
            r = check.reading
            mark = "ok  " if check.ok else "FAIL"
            print(
                f"{mark} colour {r.colour or '-':6s} cell {r.cell} kind {r.kind or '-':8s} "
                f"| {check.caption}"
            )
    acc = accuracy(checks)
    print(
        f"{acc.count} images: colour+position {acc.both:.1%} "
        f"(colour {acc.colour:.1%}, position {acc.position:.1%}; kind {acc.kind:.1%})"
    )
    if json_path is not None:
        json_path.write_text(
            json.dumps(
                {
                    "sources": sources,
                    "accuracy": acc.as_dict(),
                    "checks": [c.as_dict() for c in checks],
                },
                indent=1,
                default=str,
            )
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "job":
        print(yaml.safe_dump(_job(args), sort_keys=False), end="")
        return 0
    if args.command == "eval":
        return _run_evaluation(args)
    return _check_paths(args)


if __name__ == "__main__":
    raise SystemExit(main())
