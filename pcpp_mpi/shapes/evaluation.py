"""Caption accuracy of pcpp-mpi runs: the evaluation job and the checks of a run directory.

``evaluation_job(size)`` is a job (as a dict, for YAML) that makes one image per prompt of the
fixed :func:`~pcpp_mpi.shapes.scenes.evaluation_prompts` list with a built-in model (``tiny``
or ``tiny-pixart``)
(image ``i`` gets seed ``seed + i``, as the engine numbers them); ``check_run(run_dir)``
compares every image in a run's ``run.h5`` with its own prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pcpp_mpi.shapes.checker import Check, check_caption
from pcpp_mpi.shapes.scenes import evaluation_prompts


def evaluation_job(
    size: int,
    count: int = 36,
    *,
    steps: int = 20,
    guidance_scale: float = 5.0,
    scheduler: str = "ddim",
    seed: int = 0,
    mode: str = "single",
    model: str = "tiny",
) -> dict[str, Any]:
    """The caption-accuracy job: ``count`` fixed prompts at ``size`` x ``size`` on the CPU,
    with the built-in ``model``."""
    return {
        "model": {"builtin": model},
        "generation": {
            "prompts": evaluation_prompts(count),
            "negative_prompts": [""],
            "height": size,
            "width": size,
            "steps": steps,
            "guidance_scale": guidance_scale,
            "scheduler": scheduler,
            "seed": seed,
        },
        "runtime": {"dtype": "float32", "device": "cpu"},
        "parallel": {"mode": mode},
        "output": {"png": True},
    }


@dataclass(frozen=True)
class RunImage:
    name: str
    image: np.ndarray
    prompt: str
    seed: int


def images_of_run(run_dir: str | Path) -> list[RunImage]:
    """Every image of ``run_dir/run.h5`` with its prompt and seed, in name order."""
    import h5py

    path = Path(run_dir) / "run.h5"
    if not path.is_file():
        raise FileNotFoundError(f"no run file {path}")
    with h5py.File(path, "r") as file:
        group = file.get("images")
        if group is None:
            return []
        return [
            RunImage(
                name=name,
                image=np.asarray(group[name][()]),
                prompt=str(group[name].attrs["prompt"]),
                seed=int(group[name].attrs["seed"]),
            )
            for name in sorted(group)
        ]


def check_run(run_dir: str | Path) -> list[tuple[RunImage, Check]]:
    """Each image of a run checked against its own prompt."""
    return [(item, check_caption(item.image, item.prompt)) for item in images_of_run(run_dir)]
