"""A font fallback chain for captions: MIRFLICKR tags are written in many scripts, and no one font draws them all.

Each character comes from the first face that has it: DejaVu Sans (matplotlib ships it) for Latin, Greek and
Cyrillic, then well-known system fonts, then any other system font. Fonts are found through matplotlib's
``findSystemFonts`` (fontconfig where present), which looks at the disk each time, unlike matplotlib's cached font
list, so fonts installed later are found. Cmaps are read only when a character needs them, once per process.
"""

from __future__ import annotations

import functools
import itertools
import unicodedata
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import matplotlib
from fontTools.ttLib import TTFont
from matplotlib import font_manager
from PIL import ImageDraw, ImageFont

INSTALL_HINT = "sudo apt-get install fonts-noto-core fonts-noto-cjk"
REPLACEMENT = "\ufffd"


@dataclass(frozen=True)
class Face:
    """One font of a file: ``index`` picks it in a collection (``.ttc``)."""

    path: Path
    index: int = 0


DEJAVU = Face(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf")

DEJAVU_FIRST = ((0x0000, 0x058F), (0x1D00, 0x2BFF), (0xFB00, 0xFB06))
"""Where DejaVu comes first: Latin, Greek, Cyrillic, Armenian, punctuation and symbols. It has only part of Arabic
and Hebrew, so their script fonts come first there (a word drawn in two fonts would not join)."""

PREFERRED = (
    "NotoSans-Regular",
    "NotoSansCJK-Regular",  # face 0 of the collection is Noto Sans CJK JP
    "NotoSansCJKjp-Regular",
    "NotoSansArabic-Regular",
    "NotoSansDevanagari-Regular",
    "NotoSansHebrew-Regular",
    "NotoSansThai-Regular",
    "NotoSansBengali-Regular",
)
"""System fonts (file names without suffix) tried in this order after DejaVu, before all others."""

_IN_RUN = {"Mn", "Mc", "Me", "Cf", "Zs"}
"""Categories that stay in the run they follow (marks, joiners, spaces), so a phrase of one script is shaped as one."""


class MissingGlyphWarning(UserWarning):
    """Some caption characters have no font on this machine and show as U+FFFD."""


@functools.cache
def _system_fonts() -> tuple[Path, ...]:
    """Font files on this machine, regular sans faces first (the likeliest good fallback)."""
    paths = {Path(name) for name in font_manager.findSystemFonts()}
    return tuple(sorted(paths, key=lambda p: ("Regular" not in p.name, "Sans" not in p.name, p.name)))


@functools.cache
def _preferred() -> tuple[Face, ...]:
    by_stem = {path.stem: path for path in _system_fonts()}
    return tuple(Face(by_stem[stem]) for stem in PREFERRED if stem in by_stem)


def _faces() -> Iterator[Face]:
    """Every face in fallback order; the system fonts are listed only once a character gets that far."""
    yield from _preferred()
    yield DEJAVU
    preferred = set(_preferred())
    yield from (face for face in map(Face, _system_fonts()) if face not in preferred)


@functools.cache
def cmap(face: Face) -> frozenset[int]:
    """The code points ``face`` draws; none for a file fontTools cannot read or one without outlines (bitmap emoji,
    which Pillow cannot scale)."""
    try:
        with TTFont(face.path, fontNumber=face.index, lazy=True) as font:
            if not {"glyf", "CFF ", "CFF2"} & set(font.keys()):
                return frozenset()
            # Placeholder glyph names: the real ones would make fontTools parse a CJK font's whole CFF table.
            font.setGlyphOrder([f"g{i}" for i in range(font["maxp"].numGlyphs)])
            return frozenset(font.getBestCmap())
    except Exception:  # a broken or foreign file among the system fonts is skipped, not fatal
        return frozenset()


@functools.cache
def face_for(char: str) -> Face | None:
    """The first face in the chain that draws ``char``, or None when no font on this machine has it."""
    code = ord(char)
    if code in cmap(DEJAVU) and any(low <= code <= high for low, high in DEJAVU_FIRST):
        return DEJAVU
    return next((face for face in _faces() if code in cmap(face)), None)


def runs(text: str) -> list[tuple[str, Face]]:
    """``text`` cut into runs of consecutive characters one face draws, with that face; a character no font has
    becomes U+FFFD from DejaVu."""
    out: list[tuple[str, Face]] = []
    for char in text:
        if out and unicodedata.category(char) in _IN_RUN and ord(char) in cmap(out[-1][1]):
            face: Face | None = out[-1][1]
        else:
            face = face_for(char)
        if face is None:
            char, face = REPLACEMENT, DEJAVU
        if out and out[-1][1] == face:
            out[-1] = (out[-1][0] + char, face)
        else:
            out.append((char, face))
    return out


@functools.cache
def _pillow_font(face: Face, size: int) -> ImageFont.FreeTypeFont:
    """Pillow lays it out with raqm where installed (Arabic joining, Devanagari conjuncts), basic layout otherwise."""
    return ImageFont.truetype(face.path, size=size, index=face.index)


@dataclass(frozen=True)
class FontChain:
    """The chain at one pixel size, drawing and measuring text run by run on a common baseline."""

    size: int

    def font(self, face: Face) -> ImageFont.FreeTypeFont:
        return _pillow_font(face, self.size)

    def getlength(self, text: str) -> float:
        """Advance width of ``text`` in pixels, as Pillow's fonts measure it (so :func:`fit_text` takes a chain)."""
        return sum(self.font(face).getlength(run) for run, face in runs(text))

    def draw(
        self,
        draw: ImageDraw.ImageDraw,
        xy: tuple[float, float],
        text: str,
        fill: tuple[int, int, int],
        anchor: Literal["la", "ma", "ra"] = "la",
    ) -> None:
        """Draw ``text`` with ``xy`` at its left, middle or right and at DejaVu's ascender, like Pillow's anchors."""
        parts = [(run, self.font(face)) for run, face in runs(text)]
        lengths = [font.getlength(run) for run, font in parts]
        x = xy[0] - "lmr".index(anchor[0]) / 2 * sum(lengths)
        baseline = xy[1] + self.font(DEJAVU).getmetrics()[0]
        for (run, font), length in zip(parts, lengths, strict=True):
            draw.text((x, baseline), run, fill=fill, font=font, anchor="ls")
            x += length


def warn_missing(texts: Iterable[str]) -> None:
    """One warning naming every character of ``texts`` that no font draws, and what to install."""
    missing = sorted({char for char in itertools.chain.from_iterable(texts) if face_for(char) is None})
    if missing:
        names = ", ".join(f"{char!r} (U+{ord(char):04X})" for char in missing)
        warnings.warn(
            f"no installed font draws {names}; captions show {REPLACEMENT} instead. On Debian: {INSTALL_HINT}",
            MissingGlyphWarning,
            stacklevel=3,
        )
