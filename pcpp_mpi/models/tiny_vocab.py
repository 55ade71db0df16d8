"""The closed world of the shapes scenes: colours, shape kinds, sizes, positions and words.

Everything the scene generator can say, the tokenizer knows, and the checker can read back is
defined here, once. Changing any of these tables changes the training data and the token ids,
so the committed tiny-model weights must be retrained after an edit (the weights file records
:func:`vocab_fingerprint` and the loader refuses a mismatch).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

# Named colours, (R, G, B) in 0..255. Chosen far apart in RGB so that the checker can name a
# colour by its nearest neighbour even in a blurry generated image.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (240, 220, 50),
    "green": (50, 170, 70),
    "cyan": (60, 210, 220),
    "blue": (40, 70, 210),
    "purple": (140, 60, 190),
    "pink": (245, 150, 200),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)

# Shape kinds; how each is drawn is in :mod:`pcpp_mpi.shapes.render`.
KINDS: tuple[str, ...] = ("circle", "square", "triangle", "diamond")

# Size words and the shape's size (diameter / side) as a fraction of min(height, width).
SIZES: dict[str, tuple[float, float]] = {"small": (0.16, 0.22), "large": (0.26, 0.32)}
SIZE_NAMES: tuple[str, ...] = tuple(SIZES)

# 3 x 3 grid of positions: (row, col) -> phrase. Rows/cols 0, 1, 2 = top/left, middle, bottom/right.
POSITIONS: dict[tuple[int, int], str] = {
    (0, 0): "at the top left",
    (0, 1): "at the top",
    (0, 2): "at the top right",
    (1, 0): "at the left",
    (1, 1): "in the center",
    (1, 2): "at the right",
    (2, 0): "at the bottom left",
    (2, 1): "at the bottom",
    (2, 2): "at the bottom right",
}
# Centre of a shape in grid cell k (fraction of the image's width or height), and the largest
# random offset from it. Cell borders are at 1/3 and 2/3, far from any centre the generator uses.
CELL_CENTRES: tuple[float, float, float] = (0.2, 0.5, 0.8)
CENTRE_JITTER = 0.04

# Minimum RGB distance between a shape's colour and any background colour behind it.
MIN_CONTRAST = 120.0

SPECIAL_TOKENS: tuple[str, ...] = ("<pad>",)
UNKNOWN_BUCKETS = 8  # unknown words hash into <unk0> .. <unk7>


def split_words(text: str) -> list[str]:
    """Lower-case words of ``text`` (letters only; digits and punctuation separate words)."""
    return re.findall(r"[a-z]+", text.lower())


def words() -> tuple[str, ...]:
    """Every word a caption can contain, in a fixed order (token ids follow this order)."""
    phrase_words: list[str] = []
    for phrase in POSITIONS.values():
        phrase_words.extend(phrase.split())
    ordered = [
        "a",
        *SIZE_NAMES,
        *COLOUR_NAMES,
        *KINDS,
        *phrase_words,
        "on",
        "background",
        "to",
        "gradient",
    ]
    return tuple(dict.fromkeys(ordered))


def token_strings() -> tuple[str, ...]:
    """The tokenizer's vocabulary: ``<pad>``, the unknown-word buckets, then :func:`words`."""
    unknown = tuple(f"<unk{i}>" for i in range(UNKNOWN_BUCKETS))
    return (*SPECIAL_TOKENS, *unknown, *words())


def vocab_fingerprint(extra: Sequence[str] = ()) -> str:
    """A short hash of every table above; stored with the weights to detect a stale vocabulary."""
    parts = [
        repr(COLOURS),
        repr(KINDS),
        repr(SIZES),
        repr(sorted(POSITIONS.items())),
        repr(CELL_CENTRES),
        repr(CENTRE_JITTER),
        repr(MIN_CONTRAST),
        repr(token_strings()),
        *extra,
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
