"""PNG copies of the generated images."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from pcpp_mpi.output.errors import OutputError


def check_image(image: np.ndarray) -> np.ndarray:
    """Return ``image`` as a C-contiguous array after checking it is (H, W, 3) uint8."""
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(
            f"an image must be a (H, W, 3) uint8 array, got shape {array.shape} "
            f"and dtype {array.dtype}"
        )
    return np.ascontiguousarray(array)


def write_png(
    path: str | Path, image: np.ndarray, *, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write an (H, W, 3) uint8 image as an RGB PNG, with optional text chunks."""
    from PIL import Image, PngImagePlugin

    array = check_image(image)
    path = Path(path)
    info = None
    if metadata:
        info = PngImagePlugin.PngInfo()
        for key, value in metadata.items():
            info.add_text(str(key), str(value))
    try:
        Image.fromarray(array).save(path, format="PNG", pnginfo=info)
    except OSError as exc:
        raise OutputError(f"cannot write PNG {path}: {exc.strerror or exc}") from exc
    return path
