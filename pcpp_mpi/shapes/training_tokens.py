"""Token ids of training captions, straight from scene arrays (the training loop's fast path)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pcpp_mpi.models.tiny_text import PAD_ID, WordTokenizer
from pcpp_mpi.models.tiny_vocab import COLOUR_NAMES, KINDS, POSITIONS, SIZE_NAMES
from pcpp_mpi.shapes.scenes import SceneBatch


def training_token_ids(
    scenes: SceneBatch,
    rng: np.random.Generator,
    tokenizer: WordTokenizer,
    *,
    drop_size: float = 0.3,
    drop_background: float = 0.1,
    drop_all: float = 0.1,
) -> torch.Tensor:
    """``tokenizer(training_captions(scenes, rng, ...))``, computed from the scene arrays
    without building strings (fast enough for a training loop), drawing the same random
    numbers in the same order, so the two give identical ids and leave ``rng`` in the same
    state."""
    n = len(scenes)
    keep_size = rng.random(n) >= drop_size
    keep_background = rng.random(n) >= drop_background
    empty = rng.random(n) < drop_all
    ids = tokenizer.ids

    def table(names: Sequence[str]) -> np.ndarray:
        return np.asarray([ids[name] for name in names], dtype=np.int64)

    phrases = np.full((3, 3, 4), -1, dtype=np.int64)
    for (row, col), phrase in POSITIONS.items():
        words = phrase.split()
        phrases[row, col, : len(words)] = table(words)
    colours = table(COLOUR_NAMES)
    top, bottom = colours[scenes.bg_top], colours[scenes.bg_bottom]
    gradient = scenes.bg_top != scenes.bg_bottom
    column = np.full(n, 0, dtype=np.int64)
    grid = np.stack(
        [
            column + ids["a"],
            np.where(keep_size, table(SIZE_NAMES)[scenes.size_word], -1),
            colours[scenes.colour],
            table(KINDS)[scenes.kind],
            *phrases[scenes.row, scenes.col].T,
            np.where(keep_background, ids["on"], -1),
            np.where(keep_background, ids["a"], -1),
            np.where(keep_background, top, -1),
            np.where(keep_background & gradient, ids["to"], -1),
            np.where(keep_background & gradient, bottom, -1),
            np.where(keep_background, np.where(gradient, ids["gradient"], ids["background"]), -1),
        ],
        axis=1,
    )
    grid[empty] = -1
    # Move the words left (stable), then pad with <pad> and cut to seq_len.
    order = np.argsort(grid < 0, axis=1, kind="stable")
    packed = np.take_along_axis(grid, order, axis=1)
    packed[packed < 0] = PAD_ID
    width = tokenizer.seq_len
    if packed.shape[1] < width:
        packed = np.pad(packed, ((0, 0), (0, width - packed.shape[1])))
    return torch.from_numpy(packed[:, :width].copy())
