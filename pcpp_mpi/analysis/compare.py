"""Comparing the images (and final latents) of two run files."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from pcpp_mpi.analysis.files import (
    STATUS_NOTES,
    RunMeta,
    read_images,
    read_latents,
    read_run_meta,
    resolve_run_file,
)
from pcpp_mpi.analysis.images import ImageComparison, ImageMismatch, compare_images
from pcpp_mpi.output.errors import OutputError


@dataclass(frozen=True)
class RunImages:
    """A run file's metadata, images and final latents."""

    meta: RunMeta
    images: dict[str, np.ndarray]
    latents: dict[str, np.ndarray]

    @property
    def label(self) -> str:
        mode = self.meta.provenance.get("mode", "?")
        return f"{self.meta.path} (mode {mode}, {self.meta.n_ranks} rank(s), {self.meta.status})"


def load_run_images(path: str | Path) -> RunImages:
    """Read a run file (or a run directory's ``run.h5``) for comparison."""
    run_file = resolve_run_file(path)
    if not run_file.exists():
        raise OutputError(f"{run_file} does not exist (expected a run directory or run file)")
    return RunImages(read_run_meta(run_file), read_images(run_file), read_latents(run_file))


@dataclass(frozen=True)
class RunComparison:
    """The figures for every image both runs hold, and notes on what was left out."""

    a: RunImages
    b: RunImages
    images: list[ImageComparison]
    notes: list[str] = field(default_factory=list)


def _latent_name(image_name: str) -> str:
    return image_name.replace("image-", "latent-", 1)


def compare_runs(a: RunImages, b: RunImages) -> RunComparison:
    """Compare the images both runs hold (by name). Raises :class:`ImageMismatch` when sizes
    differ (naming both) and :class:`OutputError` when there is nothing to compare."""
    notes = []
    for label, run in (("A", a), ("B", b)):
        if run.meta.status != "complete":
            meaning = STATUS_NOTES.get(run.meta.status, "it did not finish normally")
            notes.append(f"{label} has status '{run.meta.status}': {meaning}")
    common = [name for name in a.images if name in b.images]
    only = sorted(set(a.images) ^ set(b.images))
    if only:
        notes.append(f"images in only one of the runs (not compared): {', '.join(only)}")
    if not common:
        held = [
            f"{label} = {r.label} holds {len(r.images)} image(s)"
            for label, r in (("A", a), ("B", b))
        ]
        why = "" if a.images and b.images else " (a run writes its images when it finishes)"
        raise OutputError(f"no image to compare: {'; '.join(held)}{why}")
    results = []
    for name in common:
        try:
            result = compare_images(name, a.images[name], b.images[name])
        except ImageMismatch as exc:
            raise ImageMismatch(f"{name}: {exc} (A: {a.meta.path}, B: {b.meta.path})") from exc
        latent = _latent_name(name)
        la, lb = a.latents.get(latent), b.latents.get(latent)
        if la is not None and lb is not None and la.shape == lb.shape:
            diff = float(np.abs(la.astype(np.float64) - lb.astype(np.float64)).max())
            result = replace(result, latent_max_abs_diff=diff)
        results.append(result)
    return RunComparison(a=a, b=b, images=results, notes=notes)
