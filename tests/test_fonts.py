"""The caption font chain: tags in many scripts draw as glyphs from fonts that have them, never as boxes."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from fontTools.ttLib import TTFont
from PIL import Image, ImageDraw, ImageFont

from pipeline.core.fonts import (
    DEJAVU,
    INSTALL_HINT,
    REPLACEMENT,
    Face,
    FontChain,
    MissingGlyphWarning,
    face_for,
    runs,
)
from pipeline.core.render import ELLIPSIS, CollageLayout, CollageRow, fit_text, render_collage

CAPTION = "münchen Ελλάδα Москва 東京 서울 القاهرة दिल्ली"
UNDRAWABLE = "\U0010fffd\U0010fffc"  # private use: no font has them


@pytest.fixture(scope="module", autouse=True)
def caption_fonts() -> None:
    """Fails, rather than skips, where the system fonts are missing: captions would show U+FFFD there."""
    missing = sorted({char for char in CAPTION if face_for(char) is None})
    assert not missing, f"no installed font draws {missing}; install them: {INSTALL_HINT}"


def reference_cmap(face: Face) -> dict[int, str]:
    """The face's cmap as fontTools reads it by default (real glyph names), not as the chain reads it."""
    with TTFont(face.path, fontNumber=face.index) as font:
        return font.getBestCmap()


def ink(font: ImageFont.FreeTypeFont, text: str) -> np.ndarray:
    image = Image.new("L", (200, 60))
    ImageDraw.Draw(image).text((10, 45), text, fill=255, font=font, anchor="ls")
    return np.asarray(image)


def test_every_character_comes_from_a_font_that_has_it() -> None:
    pieces = runs(CAPTION)
    assert "".join(run for run, _ in pieces) == CAPTION
    for run, face in pieces:
        cmap = reference_cmap(face)
        assert all(ord(char) in cmap for char in run), f"{run!r} drawn from {face}, which lacks some of it"
    faces = {char: face for run, face in pieces for char in run}
    assert faces["ü"] == faces["λ"] == faces["к"] == DEJAVU
    assert all(faces[char] != DEJAVU for char in "東京서울दि")
    assert len({faces["東"], faces["ق"], faces["द"]}) == 3


def test_a_cjk_glyph_is_drawn_not_a_box() -> None:
    chain = FontChain(32)
    font = chain.font(face_for("東"))
    glyph = ink(font, "東")
    assert glyph.any()
    assert not np.array_equal(glyph, ink(font, UNDRAWABLE[0])), "東 drew the font's .notdef box"
    image = Image.new("L", (200, 60))
    chain.draw(ImageDraw.Draw(image), (10, 10), "東京", fill=255)
    boxes = Image.new("L", (200, 60))
    ImageDraw.Draw(boxes).text((10, 10), "東京", fill=255, font=chain.font(DEJAVU))
    assert np.asarray(image).any() and not np.array_equal(np.asarray(image), np.asarray(boxes))


def test_a_character_no_font_has_shows_the_replacement(tmp_path: Path) -> None:
    assert runs(f"a{UNDRAWABLE}b") == [(f"a{REPLACEMENT * 2}b", DEJAVU)]
    assert ord(REPLACEMENT) in reference_cmap(DEJAVU)
    rows = [CollageRow(images=(np.zeros((8, 8, 3), np.uint8),), caption=f"{UNDRAWABLE} tokyo 東京 {UNDRAWABLE}")] * 3
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        render_collage(rows, tmp_path / "collage.png", tile=48, columns=("photo",))
    assert [w.category for w in caught] == [MissingGlyphWarning]
    message = str(caught[0].message)
    assert "U+10FFFD" in message and "U+10FFFC" in message and INSTALL_HINT in message


def test_a_multilingual_collage_has_the_layout_size(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = [CollageRow(tuple(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8) for _ in range(3)), CAPTION)] * 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", MissingGlyphWarning)
        path = render_collage(rows, tmp_path / "collage.png", tile=96)
    layout = CollageLayout(tile=96, n_rows=2)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (layout.width, layout.height)


def test_fit_text_measures_with_the_chain() -> None:
    chain = FontChain(14)
    text = "東京, 서울, " * 20
    fitted = fit_text(text, chain, 150)
    assert fitted.endswith(ELLIPSIS) and text.startswith(fitted[:-1])
    assert 100 < chain.getlength(fitted) <= 150
