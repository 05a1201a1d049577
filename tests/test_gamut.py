"""Lab → sRGB keeping the lightness: the rule on every encoded colour, and the table that applies it to whole
photos (the same pixels), cached and checked."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from model.gamut import (
    CODES,
    build_gamut_table,
    gamut_table,
    load_or_build_table,
    rgb_from_table,
    rgb_keeping_lightness,
    table_cache_dir,
)
from pipeline.core.color import rgb_to_lab_u8


def test_out_of_gamut_colour_is_desaturated_not_darkened() -> None:
    lightness = np.tile(np.arange(256, dtype=np.uint8), (4, 1))
    extreme = np.zeros((4, 256, 2), dtype=np.uint8)
    extreme[..., 0] = 255
    rgb = rgb_keeping_lightness(np.dstack([lightness, extreme]))
    assert np.abs(rgb_to_lab_u8(rgb)[..., 0].astype(int) - lightness).max() <= 1
    mild_lab = rgb_to_lab_u8(np.full((2, 2, 3), (150, 110, 90), dtype=np.uint8))
    mild = rgb_keeping_lightness(mild_lab)
    np.testing.assert_allclose(rgb_to_lab_u8(mild)[..., 1:], mild_lab[..., 1:], atol=1)


def test_every_encoded_lab_colour_keeps_its_lightness() -> None:
    """All 2²⁴ codes at once, so the pixels spared the round-trip check (unclipped, above the darkest levels)
    are shown to keep their L as well as the checked ones."""
    codes = np.arange(2**24, dtype=np.uint32)
    lab = np.stack([codes >> 16, (codes >> 8) & 255, codes & 255], axis=-1).astype(np.uint8).reshape(4096, 4096, 3)
    rgb = rgb_keeping_lightness(lab)
    assert np.abs(rgb_to_lab_u8(rgb)[..., 0].astype(np.int16) - lab[..., 0]).max() <= 1


@pytest.fixture(scope="module")
def table() -> np.ndarray:
    return gamut_table()


def test_the_table_colours_a_photo_exactly_as_the_rule(table: np.ndarray) -> None:
    rng = np.random.default_rng(1)
    lab = rgb_to_lab_u8(cv2.GaussianBlur(rng.integers(0, 256, (90, 130, 3), dtype=np.uint8), (9, 9), 0))
    ab = rng.integers(0, 256, (90, 130, 2), dtype=np.uint8)  # any chroma: in and far out of the gamut
    expected = rgb_keeping_lightness(np.dstack([lab[..., 0], ab]))
    np.testing.assert_array_equal(rgb_from_table(lab, ab, table), expected)
    assert table.shape == (CODES,)


def test_a_cached_table_is_used_only_when_it_agrees_with_the_rule(tmp_path: Path, table: np.ndarray) -> None:
    path = tmp_path / "table.npy"
    path.write_bytes(b"damaged")
    rebuilt = load_or_build_table(path)
    assert np.array_equal(rebuilt, table) and isinstance(np.load(path, mmap_mode="r"), np.memmap), "rebuilt, cached"
    assert isinstance(load_or_build_table(path), np.memmap), "then read from the cache"
    wrong = np.array(table)
    wrong[::97] ^= 1  # a table made by another rule, in one colour of 97
    np.save(path, wrong)
    assert np.array_equal(load_or_build_table(path), table), "a table of another rule is built again"
    assert table_cache_dir({"TAGCOLOR_CACHE_DIR": "/c"}) == Path("/c")
    assert table_cache_dir({"XDG_CACHE_HOME": "/x"}) == Path("/x/tagcolor")


def test_building_the_table_matches_the_rule_on_every_code(table: np.ndarray) -> None:
    assert np.array_equal(build_gamut_table()[:: 2**12], table[:: 2**12])
