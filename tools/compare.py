#!/usr/bin/env python3
"""Compare the images of two pcpp-mpi run files: PSNR, SSIM, max |difference|, heat map.

Every image both runs hold (same name, same size) is compared; the final latents' maximum
absolute difference is reported too when both runs hold them. A PNG per image shows A, B and
the difference heat map. Works on interrupted or failed runs that hold images (it says so).

Exit status: 0 compared, 1 an input cannot be read, holds no image, or the sizes differ
(both are named), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from pcpp_mpi.analysis.cli import EXIT_OK, run_tool
from pcpp_mpi.analysis.compare import compare_runs, load_run_images
from pcpp_mpi.analysis.images import plot_difference


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="compare.py", description=__doc__.splitlines()[0])
    p.add_argument("a", metavar="A", help="run directory or run.h5")
    p.add_argument("b", metavar="B", help="run directory or run.h5")
    p.add_argument(
        "--png",
        default="compare.png",
        help="heat-map PNG (compare.png); with several images: STEM-image-NNNN.png",
    )
    p.add_argument("--no-png", action="store_true", help="figures only, no PNG")
    p.add_argument("--json", action="store_true", help="JSON output")
    return p


def _png_path(base: Path, name: str, several: bool) -> Path:
    return base.with_name(f"{base.stem}-{name}{base.suffix or '.png'}") if several else base


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def body() -> int:
        a, b = load_run_images(args.a), load_run_images(args.b)
        result = compare_runs(a, b)
        pngs: dict[str, str] = {}
        if not args.no_png:
            several = len(result.images) > 1
            for image in result.images:
                path = _png_path(Path(args.png), image.name, several)
                title = (
                    f"{image.name}: PSNR {_db(image.psnr_db)}, SSIM {image.ssim:.4f}, "
                    f"max |diff| {image.max_abs_diff:.0f}"
                )
                plot_difference(
                    a.images[image.name],
                    b.images[image.name],
                    path,
                    labels=(f"A: {a.label}", f"B: {b.label}"),
                    title=title,
                )
                pngs[image.name] = str(path)
        if args.json:
            document = {
                "a": {"path": str(a.meta.path), "status": a.meta.status},
                "b": {"path": str(b.meta.path), "status": b.meta.status},
                "images": [{**i.as_dict(), "png": pngs.get(i.name)} for i in result.images],
                "notes": result.notes,
            }
            print(json.dumps(document, indent=1))
            for note in result.notes:
                print(f"compare.py: note: {note}", file=sys.stderr)
            return EXIT_OK
        print(f"A: {a.label}")
        print(f"B: {b.label}")
        for note in result.notes:
            print(f"NOTE: {note}")
        for image in result.images:
            latent = (
                ""
                if image.latent_max_abs_diff is None
                else f"  latent max |diff| {image.latent_max_abs_diff:.3g}"
            )
            png = f"  -> {pngs[image.name]}" if image.name in pngs else ""
            print(
                f"{image.name} ({image.height}x{image.width}): PSNR {_db(image.psnr_db)}  "
                f"SSIM {image.ssim:.4f}  max |diff| {image.max_abs_diff:.0f}/255  "
                f"mean |diff| {image.mean_abs_diff:.3f}{latent}{png}"
            )
        return EXIT_OK

    return run_tool("compare.py", body)


def _db(value: float) -> str:
    return "inf (identical)" if math.isinf(value) else f"{value:.2f} dB"


if __name__ == "__main__":
    sys.exit(main())
