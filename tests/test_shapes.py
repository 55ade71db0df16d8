"""Tests of pcpp_mpi.shapes: the scene generator, captions, renderer, tokenizer and checker."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pcpp_mpi.models.tiny_text import SEQ_LEN, TextEncoderConfig, TinyTextEncoder, WordTokenizer
from pcpp_mpi.models.tiny_vocab import (
    COLOUR_NAMES,
    COLOURS,
    KINDS,
    MIN_CONTRAST,
    SIZE_NAMES,
    vocab_fingerprint,
    words,
)
from pcpp_mpi.shapes.checker import accuracy, check_caption, nearest_colour, read_image
from pcpp_mpi.shapes.render import render_scenes, to_uint8
from pcpp_mpi.shapes.scenes import (
    caption_of,
    captions_of,
    colour_triples,
    evaluation_prompts,
    parse_caption,
    sample_scenes,
    training_captions,
)


def scenes(n: int = 60, seed: int = 0):
    return sample_scenes(n, np.random.default_rng(seed))


# -- generator ------------------------------------------------------------------------------


def test_generator_is_deterministic_per_seed() -> None:
    a, b, c = scenes(seed=3), scenes(seed=3), scenes(seed=4)
    for name in a.__dataclass_fields__:
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert captions_of(a) == captions_of(b)
    assert captions_of(a) != captions_of(c)
    assert torch.equal(render_scenes(a, 64, 64), render_scenes(b, 64, 64))


def test_scenes_cover_the_vocabulary_and_keep_contrast() -> None:
    batch = scenes(2000)
    assert set(batch.kind) == set(range(len(KINDS)))
    assert set(batch.colour) == set(range(len(COLOUR_NAMES)))
    assert {(r, c) for r, c in zip(batch.row, batch.col, strict=True)} == {
        (r, c) for r in range(3) for c in range(3)
    }
    assert 0.2 < np.mean(batch.bg_top != batch.bg_bottom) < 0.4  # gradients ~30%
    plain, gradient = colour_triples()
    for shape, top, bottom in [*plain, *gradient]:
        for end in (top, bottom):
            gap = np.subtract(COLOURS[COLOUR_NAMES[shape]], COLOURS[COLOUR_NAMES[end]])
            assert np.linalg.norm(gap) >= MIN_CONTRAST
    # the shape stays inside its grid cell's third of the image
    assert np.all(np.floor(batch.cx * 3) == batch.col)
    assert np.all(np.floor(batch.cy * 3) == batch.row)


def test_caption_parses_back_to_the_scene() -> None:
    batch = scenes(200)
    for i in range(len(batch)):
        facts = parse_caption(caption_of(batch, i))
        assert facts.colour == COLOUR_NAMES[batch.colour[i]]
        assert facts.kind == KINDS[batch.kind[i]]
        assert facts.size == SIZE_NAMES[batch.size_word[i]]
        assert facts.cell == (batch.row[i], batch.col[i])
        assert facts.background == (COLOUR_NAMES[batch.bg_top[i]], COLOUR_NAMES[batch.bg_bottom[i]])
        short = parse_caption(caption_of(batch, i, with_size=False, with_background=False))
        assert short.size is None and short.background is None
        assert short.cell == facts.cell and short.colour == facts.colour


def test_caption_examples() -> None:
    facts = parse_caption("A Red circle, at the TOP left; on a blue background.")
    assert (facts.colour, facts.kind, facts.cell, facts.background) == (
        "red",
        "circle",
        (0, 0),
        ("blue", "blue"),
    )
    assert parse_caption("a green square in the center").cell == (1, 1)
    assert parse_caption("a green square at the bottom").cell == (2, 1)
    assert parse_caption("a pink diamond on a white to black gradient").background == (
        "white",
        "black",
    )
    assert parse_caption("a green square").cell is None
    assert parse_caption("").colour is None


def test_training_captions_drop_parts_and_whole_captions() -> None:
    batch = scenes(4000)
    captions = training_captions(batch, np.random.default_rng(1))
    empty = np.mean([c == "" for c in captions])
    assert 0.08 < empty < 0.12
    kept = [c for c in captions if c]
    with_size = np.mean([parse_caption(c).size is not None for c in kept])
    assert 0.65 < with_size < 0.75
    assert all(parse_caption(c).cell is not None for c in kept)


def test_evaluation_prompts_are_fixed_and_balanced() -> None:
    prompts = evaluation_prompts(36)
    assert prompts == evaluation_prompts(36)
    cells = [parse_caption(p).cell for p in prompts]
    assert all(cells.count(cell) == 4 for cell in set(cells)) and len(set(cells)) == 9


# -- renderer -------------------------------------------------------------------------------


@pytest.mark.parametrize(("height", "width"), [(64, 64), (32, 96), (160, 128)])
def test_render_places_the_shape_in_its_cell(height: int, width: int) -> None:
    batch = scenes(20)
    images = render_scenes(batch, height, width)
    assert images.shape == (20, 3, height, width) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1
    pixels = to_uint8(images)
    assert pixels.shape == (20, height, width, 3) and pixels.dtype == np.uint8
    for i in range(len(batch)):
        y, x = int(batch.cy[i] * height), int(batch.cx[i] * width)
        assert nearest_colour(pixels[i, y, x]) == COLOUR_NAMES[batch.colour[i]]


# -- checker --------------------------------------------------------------------------------


@pytest.mark.parametrize(("height", "width"), [(32, 32), (64, 64), (256, 256), (160, 128)])
def test_checker_reads_back_the_generators_captions(height: int, width: int) -> None:
    batch = scenes(120, seed=5)
    images = to_uint8(render_scenes(batch, height, width))
    checks = [check_caption(im, c) for im, c in zip(images, captions_of(batch), strict=True)]
    result = accuracy(checks)
    assert result.both == 1.0
    assert result.kind >= (0.9 if height == 32 else 0.98)


def test_checker_fails_a_wrong_caption_and_an_empty_image() -> None:
    batch = scenes(1, seed=2)
    image = to_uint8(render_scenes(batch, 64, 64))[0]
    facts = parse_caption(caption_of(batch, 0))
    other_colour = next(c for c in COLOUR_NAMES if c != facts.colour)
    other_cell = "in the center" if facts.cell != (1, 1) else "at the top left"
    assert check_caption(image, caption_of(batch, 0)).ok
    assert not check_caption(image, f"a {other_colour} shape {other_cell}").ok
    assert not check_caption(image, f"a {facts.colour} shape {other_cell}").position_ok
    plain = np.full((64, 64, 3), 128, dtype=np.uint8)
    reading = read_image(plain)
    assert reading.colour is None and reading.cell is None
    assert not check_caption(plain, "a red circle at the top left").ok
    with pytest.raises(ValueError):
        read_image(np.zeros((8, 8), dtype=np.uint8))


# -- tokenizer and text encoder -------------------------------------------------------------


def test_tokenizer_round_trips_every_caption_word() -> None:
    tokenizer = WordTokenizer()
    for caption in captions_of(scenes(300)):
        ids = tokenizer.encode(caption)
        assert len(ids) == SEQ_LEN
        assert not any(tokenizer.is_unknown(i) for i in ids)
        assert tokenizer.decode(ids) == caption
    assert set(words()) <= set(tokenizer.tokens)
    assert tokenizer.vocab_size == len(set(tokenizer.tokens))


def test_tokenizer_handles_case_punctuation_unknown_words_and_length() -> None:
    tokenizer = WordTokenizer()
    assert tokenizer.encode("A RED, circle!") == tokenizer.encode("a red circle")
    assert tokenizer.encode("") == [0] * SEQ_LEN
    ids = tokenizer.encode("a photo of a red circle")
    assert tokenizer.decode(ids) == "a <unk> <unk> a red circle"
    assert ids == tokenizer.encode("a photo of a red circle")  # deterministic
    unknown = {tokenizer.word_id(w) for w in ("cat", "dog", "photo", "zebra", "unk", "pad")}
    assert all(tokenizer.is_unknown(i) for i in unknown) and len(unknown) > 1
    long = " ".join(["red"] * 40)
    assert tokenizer.encode(long) == [tokenizer.ids["red"]] * SEQ_LEN
    batch = tokenizer(["a red circle", ""])
    assert batch.shape == (2, SEQ_LEN) and batch.dtype == torch.int64
    with pytest.raises(TypeError):
        tokenizer("a red circle")  # type: ignore[arg-type]


def test_text_encoder_shapes() -> None:
    tokenizer = WordTokenizer()
    encoder = TinyTextEncoder(TextEncoderConfig(vocab_size=tokenizer.vocab_size))
    out = encoder(tokenizer(["a red circle at the top left", ""]))
    assert out.shape == (2, SEQ_LEN, 32)


def test_vocab_fingerprint_is_stable() -> None:
    assert vocab_fingerprint() == vocab_fingerprint()
    assert len(vocab_fingerprint()) == 16
