"""Read a shapes scene back from an image and compare it with a caption.

The reading needs no model: the background of each row is the per-channel median of the row
(the shape never covers half a row, and a vertical gradient is constant along a row); pixels far
from their row's background form the foreground, and its largest 4-connected component is the
main shape. Its median colour names the colour (nearest palette entry), its centroid the 3 x 3
grid cell, and its fill of its bounding box and the height of its centroid in the box name the
kind (square ~1, circle ~0.79, triangle and diamond ~0.5; a triangle's centroid sits low).

A caption *matches* an image when the colour and the grid cell agree; the kind is reported
separately (it is harder to read at small sizes and not part of the headline accuracy).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from pcpp_mpi.models.tiny_vocab import COLOUR_NAMES, COLOURS, MIN_CONTRAST
from pcpp_mpi.shapes.scenes import CaptionFacts, parse_caption

ANALYSIS_SIZE = 128  # larger images are block-averaged down to about this size first
FOREGROUND_THRESHOLD = MIN_CONTRAST / 2  # RGB distance from the row's background
MIN_AREA_FRACTION = 0.003  # a component smaller than this is not a shape

_PALETTE = np.asarray([COLOURS[name] for name in COLOUR_NAMES], dtype=np.float64)


@dataclass(frozen=True)
class Reading:
    """What the checker sees in an image; ``colour`` is ``None`` when it finds no shape."""

    colour: str | None
    row: int | None
    col: int | None
    kind: str | None
    area_fraction: float
    background: tuple[str, str]  # nearest palette colours of the top and bottom rows

    @property
    def cell(self) -> tuple[int, int] | None:
        return None if self.row is None or self.col is None else (self.row, self.col)


@dataclass(frozen=True)
class Check:
    """A caption against an image: per-attribute agreement and the headline ``ok``.

    An attribute the caption does not mention counts as agreeing.
    """

    caption: str
    expected: CaptionFacts
    reading: Reading
    colour_ok: bool
    position_ok: bool
    kind_ok: bool

    @property
    def ok(self) -> bool:
        return self.colour_ok and self.position_ok

    def as_dict(self) -> dict[str, object]:
        return {
            "caption": self.caption,
            "ok": self.ok,
            "colour_ok": self.colour_ok,
            "position_ok": self.position_ok,
            "kind_ok": self.kind_ok,
            "reading": asdict(self.reading),
        }


def nearest_colour(rgb: np.ndarray) -> str:
    """Name of the palette colour nearest to ``rgb`` (0..255)."""
    distances = np.linalg.norm(_PALETTE - np.asarray(rgb, dtype=np.float64), axis=-1)
    return COLOUR_NAMES[int(np.argmin(distances))]


def _downsample(image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    factor = max(1, min(height, width) // ANALYSIS_SIZE)
    if factor == 1:
        return image.astype(np.float64)
    h, w = height // factor * factor, width // factor * factor
    blocks = image[:h, :w].astype(np.float64).reshape(h // factor, factor, w // factor, factor, 3)
    return blocks.mean(axis=(1, 3))


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """Boolean mask of the largest 4-connected component of ``mask`` (empty if none)."""
    height, width = mask.shape
    labels = np.zeros(mask.shape, dtype=np.int32)
    best_label, best_size, label = 0, 0, 0
    for start_y, start_x in zip(*np.nonzero(mask), strict=True):
        if labels[start_y, start_x]:
            continue
        label += 1
        labels[start_y, start_x] = label
        queue, size = deque([(start_y, start_x)]), 0
        while queue:
            y, x = queue.popleft()
            size += 1
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = label
                    queue.append((ny, nx))
        if size > best_size:
            best_label, best_size = label, size
    return labels == best_label if best_label else np.zeros_like(mask)


def _kind_of(component: np.ndarray) -> str:
    ys, xs = np.nonzero(component)
    y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
    fill = len(ys) / float((y1 - y0 + 1) * (x1 - x0 + 1))
    if fill >= 0.9:
        return "square"
    if fill >= 0.66:
        return "circle"
    centroid = (ys.mean() - y0 + 0.5) / (y1 - y0 + 1)
    return "triangle" if centroid > 0.57 else "diamond"


def read_image(image: np.ndarray) -> Reading:
    """Read the main shape of an ``(H, W, 3)`` uint8 (or 0..255 float) image."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
    pixels = _downsample(image)
    height, width = pixels.shape[:2]
    background = np.median(pixels, axis=1)  # (H, 3): one colour per row
    edge = max(1, height // 10)
    background_names = (
        nearest_colour(np.median(background[:edge], axis=0)),
        nearest_colour(np.median(background[-edge:], axis=0)),
    )
    distance = np.linalg.norm(pixels - background[:, None, :], axis=-1)
    component = _largest_component(distance > FOREGROUND_THRESHOLD)
    area = float(component.sum()) / (height * width)
    if area < MIN_AREA_FRACTION:
        return Reading(None, None, None, None, area, background_names)
    ys, xs = np.nonzero(component)
    # The colour from the component's core (the pixels farthest from the background), which
    # leaves out blended edge pixels.
    strength = distance[ys, xs]
    core = strength >= np.median(strength)
    colour = nearest_colour(np.median(pixels[ys[core], xs[core]], axis=0))
    row = min(2, int(3 * (ys.mean() + 0.5) / height))
    col = min(2, int(3 * (xs.mean() + 0.5) / width))
    return Reading(colour, row, col, _kind_of(component), area, background_names)


def check_caption(image: np.ndarray, caption: str) -> Check:
    """Compare what ``caption`` says with what :func:`read_image` reads in ``image``."""
    expected = parse_caption(caption)
    reading = read_image(image)
    return Check(
        caption=caption,
        expected=expected,
        reading=reading,
        colour_ok=expected.colour is None or expected.colour == reading.colour,
        position_ok=expected.cell is None or expected.cell == reading.cell,
        kind_ok=expected.kind is None or expected.kind == reading.kind,
    )


@dataclass(frozen=True)
class Accuracy:
    """Fractions of checks that agree (``both`` = colour and position = the headline)."""

    count: int
    both: float
    colour: float
    position: float
    kind: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def accuracy(checks: Iterable[Check]) -> Accuracy:
    checks = list(checks)
    if not checks:
        raise ValueError("accuracy of no checks")

    def mean(values: Sequence[bool]) -> float:
        return float(np.mean(values))

    return Accuracy(
        count=len(checks),
        both=mean([c.ok for c in checks]),
        colour=mean([c.colour_ok for c in checks]),
        position=mean([c.position_ok for c in checks]),
        kind=mean([c.kind_ok for c in checks]),
    )
