"""Procedural scenes: one coloured shape on a plain or vertical-gradient background.

A scene is resolution-free: the shape's centre is a fraction of the image's width and height
and its size a fraction of ``min(height, width)``, so the same scene renders sensibly at 32 px
or at 1024 px (:func:`pcpp_mpi.shapes.render.render_scenes`). Scenes are drawn in batches as
numpy arrays from a seeded :class:`numpy.random.Generator`, so a seed fixes the data exactly.

Captions are produced by the same tables (:mod:`pcpp_mpi.models.tiny_vocab`) and can be parsed back
(:func:`parse_caption`), which is what the caption checker compares against.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cache

import numpy as np

from pcpp_mpi.models.tiny_vocab import (
    CELL_CENTRES,
    CENTRE_JITTER,
    COLOUR_NAMES,
    COLOURS,
    KINDS,
    MIN_CONTRAST,
    POSITIONS,
    SIZE_NAMES,
    SIZES,
    split_words,
)

GRADIENT_PROBABILITY = 0.3


@dataclass(frozen=True)
class SceneBatch:
    """``n`` scenes as parallel arrays (indices into the vocabulary tables).

    ``kind``, ``colour``, ``size_word``, ``row``, ``col``, ``bg_top``, ``bg_bottom``: int64;
    ``size`` (fraction of ``min(H, W)``), ``cx``, ``cy`` (fractions of W and H): float64.
    A plain background has ``bg_top == bg_bottom``.
    """

    kind: np.ndarray
    colour: np.ndarray
    size_word: np.ndarray
    size: np.ndarray
    row: np.ndarray
    col: np.ndarray
    cx: np.ndarray
    cy: np.ndarray
    bg_top: np.ndarray
    bg_bottom: np.ndarray

    def __len__(self) -> int:
        return len(self.kind)

    def __getitem__(self, index: slice | np.ndarray | list[int]) -> SceneBatch:
        return SceneBatch(**{name: getattr(self, name)[index] for name in _FIELDS})


_FIELDS = tuple(SceneBatch.__dataclass_fields__)


def _rgb(index: int) -> np.ndarray:
    return np.asarray(COLOURS[COLOUR_NAMES[index]], dtype=np.float64)


def _distance_to_segment(point: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    ab = b - a
    t = 0.0 if not ab.any() else float(np.clip(np.dot(point - a, ab) / np.dot(ab, ab), 0, 1))
    return float(np.linalg.norm(point - (a + t * ab)))


@cache
def colour_triples() -> tuple[np.ndarray, np.ndarray]:
    """Allowed (shape, top, bottom) colour index triples: ``(plain, gradient)`` arrays (k, 3).

    The shape's colour keeps at least ``MIN_CONTRAST`` from every background colour behind it
    (for a gradient: from the whole segment between its two ends); gradient ends differ by at
    least ``MIN_CONTRAST`` too, so the gradient is visible.
    """
    n = len(COLOUR_NAMES)
    plain, gradient = [], []
    for shape, top, bottom in itertools.product(range(n), repeat=3):
        colour, a, b = _rgb(shape), _rgb(top), _rgb(bottom)
        if _distance_to_segment(colour, a, b) < MIN_CONTRAST:
            continue
        if top == bottom:
            plain.append((shape, top, bottom))
        elif np.linalg.norm(a - b) >= MIN_CONTRAST:
            gradient.append((shape, top, bottom))
    return np.asarray(plain, dtype=np.int64), np.asarray(gradient, dtype=np.int64)


def sample_scenes(n: int, rng: np.random.Generator) -> SceneBatch:
    """Draw ``n`` scenes; every choice is uniform over the allowed ones."""
    plain, gradient = colour_triples()
    use_gradient = rng.random(n) < GRADIENT_PROBABILITY
    triples = np.where(
        use_gradient[:, None],
        gradient[rng.integers(0, len(gradient), n)],
        plain[rng.integers(0, len(plain), n)],
    )
    size_word = rng.integers(0, len(SIZE_NAMES), n)
    bounds = np.asarray([SIZES[name] for name in SIZE_NAMES])
    low, high = bounds[size_word, 0], bounds[size_word, 1]
    size = low + (high - low) * rng.random(n)
    row = rng.integers(0, 3, n)
    col = rng.integers(0, 3, n)
    centres = np.asarray(CELL_CENTRES)
    cx = centres[col] + rng.uniform(-CENTRE_JITTER, CENTRE_JITTER, n)
    cy = centres[row] + rng.uniform(-CENTRE_JITTER, CENTRE_JITTER, n)
    return SceneBatch(
        kind=rng.integers(0, len(KINDS), n),
        colour=triples[:, 0].copy(),
        size_word=size_word,
        size=size,
        row=row,
        col=col,
        cx=cx,
        cy=cy,
        bg_top=triples[:, 1].copy(),
        bg_bottom=triples[:, 2].copy(),
    )


def caption_of(
    scenes: SceneBatch, index: int, *, with_size: bool = True, with_background: bool = True
) -> str:
    """The caption of scene ``index``: ``a [size] colour kind position [on background]``.

    Examples: ``a large red circle at the top left on a blue background``,
    ``a yellow square in the center on a purple to black gradient``.
    """
    words = ["a"]
    if with_size:
        words.append(SIZE_NAMES[scenes.size_word[index]])
    words += [COLOUR_NAMES[scenes.colour[index]], KINDS[scenes.kind[index]]]
    words.append(POSITIONS[(int(scenes.row[index]), int(scenes.col[index]))])
    if with_background:
        top, bottom = COLOUR_NAMES[scenes.bg_top[index]], COLOUR_NAMES[scenes.bg_bottom[index]]
        words.append(
            f"on a {top} background" if top == bottom else f"on a {top} to {bottom} gradient"
        )
    return " ".join(words)


def captions_of(scenes: SceneBatch) -> list[str]:
    """The full caption of every scene."""
    return [caption_of(scenes, i) for i in range(len(scenes))]


def training_captions(
    scenes: SceneBatch,
    rng: np.random.Generator,
    *,
    drop_size: float = 0.3,
    drop_background: float = 0.1,
    drop_all: float = 0.1,
) -> list[str]:
    """Captions as the model is trained on them: the size word left out with probability
    ``drop_size``, the background with ``drop_background``, and the whole caption replaced by
    ``""`` (the unconditional prompt for classifier-free guidance) with ``drop_all``."""
    n = len(scenes)
    keep_size = rng.random(n) >= drop_size
    keep_background = rng.random(n) >= drop_background
    empty = rng.random(n) < drop_all
    return [
        ""
        if empty[i]
        else caption_of(
            scenes, i, with_size=bool(keep_size[i]), with_background=bool(keep_background[i])
        )
        for i in range(n)
    ]


@dataclass(frozen=True)
class CaptionFacts:
    """What a caption says; ``None`` where it says nothing about that attribute."""

    colour: str | None
    kind: str | None
    size: str | None
    row: int | None
    col: int | None
    background: tuple[str, str] | None  # (top, bottom); equal for a plain background

    @property
    def cell(self) -> tuple[int, int] | None:
        return None if self.row is None or self.col is None else (self.row, self.col)


def parse_caption(text: str) -> CaptionFacts:
    """Read colour, kind, size, grid cell and background from a caption.

    The shape's attributes are the words before ``on``; the background the colour words after
    it. Position: ``top``/``bottom`` pick the row and ``left``/``right`` the column; a position
    phrase without one of them (``at the top``, ``in the center``) means the middle.
    """
    words = split_words(text)
    cut = words.index("on") if "on" in words else len(words)
    shape_part, background_part = words[:cut], words[cut:]

    def first(candidates: tuple[str, ...], part: list[str]) -> str | None:
        return next((w for w in part if w in candidates), None)

    vertical = first(("top", "bottom"), shape_part)
    horizontal = first(("left", "right"), shape_part)
    has_position = vertical is not None or horizontal is not None or "center" in shape_part
    row = col = None
    if has_position:
        row = {"top": 0, "bottom": 2}.get(vertical or "", 1)
        col = {"left": 0, "right": 2}.get(horizontal or "", 1)
    background_colours = [w for w in background_part if w in COLOURS]
    background = None
    if background_colours:
        background = (background_colours[0], background_colours[-1])
    return CaptionFacts(
        colour=first(COLOUR_NAMES, shape_part),
        kind=first(KINDS, shape_part),
        size=first(SIZE_NAMES, shape_part),
        row=row,
        col=col,
        background=background,
    )


def evaluation_prompts(count: int = 36, seed: int = 2024) -> list[str]:
    """A fixed list of full captions for checking a model.

    Built in blocks of 9, one prompt per grid cell in each block, each block from its own
    seeded generator, so every cell appears equally often in any multiple of 9 and a shorter
    list is a prefix of a longer one.
    """
    prompts: list[str] = []
    for block in range(-(-count // 9)):
        scenes = sample_scenes(9, np.random.default_rng([seed, block]))
        cells = np.arange(9)
        fields = {name: getattr(scenes, name) for name in _FIELDS}
        scenes = SceneBatch(**{**fields, "row": cells // 3, "col": cells % 3})
        prompts += captions_of(scenes)
    return prompts[:count]
