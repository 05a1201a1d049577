"""Lab → sRGB that keeps the photo's lightness: out-of-gamut colours lose chroma, never lightness.

:func:`rgb_keeping_lightness` is the rule. Colouring many photos uses :func:`gamut_table`, the rule applied once
to all 2²⁴ encoded Lab colours (64 MiB, ~3 s to build), kept in a cache file and looked up per pixel: the same
pixels at about half the cost of converting and checking each photo.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np

from pipeline.core.color import NEUTRAL_AB, lab_u8_to_rgb, rgb_to_lab_u8
from pipeline.core.files import atomic_path

logger = logging.getLogger(__name__)

CHROMA_SCALES = (1.0, 0.75, 0.5, 0.25, 0.0)
"""Shares of the predicted chroma tried per pixel, largest first; grey (0) always fits."""
LIGHTNESS_TOLERANCE = 1
"""Encoded L levels a pixel may move in the Lab → RGB → Lab round trip (8-bit rounding)."""
DARK_ROUNDING_LEVELS = 24
"""Below this encoded L, OpenCV's 8-bit conversion can move an unclipped colour's L by 2 levels."""
CODES = 2**24
TABLE_NAME = "lab_to_rgb_opencv{version}.npy"
SPOT_CHECKS = 4096
"""Codes of a cached table compared with the rule on loading: a table of another rule or a damaged file is
rebuilt."""


def rgb_keeping_lightness(lab: np.ndarray) -> np.ndarray:
    """uint8 RGB with the encoded lightness of ``lab`` ``(H, W, 3)`` and as much of its a, b as fits.

    sRGB cannot show every Lab colour: converting one outside its gamut clips a channel, which changes the
    lightness. Each pixel therefore keeps the largest share of its chroma (of :data:`CHROMA_SCALES`) whose
    RGB still has the photo's lightness, so the input's L survives exactly up to rounding. The whole photo is
    converted once at full chroma; only the pixels that moved are tried again at the smaller shares.
    """
    rgb = lab_u8_to_rgb(lab)
    result = rgb.reshape(-1, 3)
    light, chroma = lab.reshape(-1, 3)[:, 0], lab.reshape(-1, 3)[:, 1:]
    # Only a clipped channel (0 or 255) or OpenCV's rounding in the darkest levels moves L by more than the
    # tolerance (checked over all 2²⁴ codes), so the round trip back to Lab is done for those pixels alone.
    unclipped = cv2.inRange(rgb, (1, 1, 1), (254, 254, 254)).reshape(-1)
    candidates = np.flatnonzero((unclipped == 0) | (light < DARK_ROUNDING_LEVELS))
    pending = candidates[_lightness_moved(result[candidates], light[candidates])]
    for scale in CHROMA_SCALES[1:]:
        if pending.size == 0:
            break
        scaled = np.clip(np.rint((chroma[pending].astype(np.float32) - NEUTRAL_AB) * scale + NEUTRAL_AB), 0, 255)
        trial = np.concatenate([light[pending, None], scaled.astype(np.uint8)], axis=1)[:, None, :]
        tried = lab_u8_to_rgb(trial)[:, 0]
        fits = ~_lightness_moved(tried, light[pending]) | (scale == 0.0)
        result[pending[fits]] = tried[fits]
        pending = pending[~fits]
    return rgb


def _lightness_moved(pixels: np.ndarray, lightness: np.ndarray) -> np.ndarray:
    """Which uint8 RGB ``pixels`` ``(N, 3)`` lost their encoded ``lightness`` ``(N,)`` beyond the tolerance."""
    if pixels.size == 0:
        return np.zeros(0, dtype=bool)
    actual = rgb_to_lab_u8(pixels[:, None, :])[:, 0, 0].astype(np.int16)
    return np.abs(actual - lightness) > LIGHTNESS_TOLERANCE


def table_cache_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """``$TAGCOLOR_CACHE_DIR``, else ``$XDG_CACHE_HOME/tagcolor``, else ``~/.cache/tagcolor``."""
    if "TAGCOLOR_CACHE_DIR" in environ:
        return Path(environ["TAGCOLOR_CACHE_DIR"])
    return Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tagcolor"


def build_gamut_table() -> np.ndarray:
    """:func:`rgb_keeping_lightness` of every code ``L | a << 8 | b << 16``, as uint32 ``R | G << 8 | B << 16``."""
    table = np.empty(CODES, np.uint32)
    chunk = 2**20
    for start in range(0, CODES, chunk):
        rgbx = cv2.cvtColor(rgb_keeping_lightness(lab_of_codes(np.arange(start, start + chunk))), cv2.COLOR_RGB2RGBA)
        rgbx[..., 3] = 0
        table[start : start + chunk] = rgbx.view(np.uint32).reshape(-1)
    return table


def lab_of_codes(codes: np.ndarray) -> np.ndarray:
    """Codes ``L | a << 8 | b << 16`` as uint8 Lab ``(N, 1, 3)``."""
    codes = np.asarray(codes, dtype=np.uint32)
    return np.stack([codes & 255, (codes >> 8) & 255, codes >> 16], axis=-1).astype(np.uint8)[:, None, :]


def load_or_build_table(path: Path) -> np.ndarray:
    """The table cached at ``path`` (memory-mapped) when it agrees with the rule, else built and cached anew;
    where the cache cannot be written, the built table serves this process alone."""
    try:
        table = np.load(path, mmap_mode="r")
        if table.shape == (CODES,) and table.dtype == np.uint32 and agrees_with_rule(table):
            return table
        logger.warning("%s does not match the colour rule: building it again", path)
    except (OSError, ValueError):
        pass  # not built yet, or unreadable: built below
    logger.info("building the Lab → RGB table (once, ~3 s): %s", path)
    table = build_gamut_table()
    try:
        with atomic_path(path, suffix=".npy") as temporary:
            np.save(temporary, table)
    except OSError as error:
        logger.warning("cannot cache the Lab → RGB table at %s (%s): it is built again by each process", path, error)
    return table


def agrees_with_rule(table: np.ndarray) -> bool:
    """Whether seeded random codes and the two extremes give the rule's RGB."""
    spots = np.concatenate([np.random.default_rng(0).integers(0, CODES, SPOT_CHECKS), [0, CODES - 1]])
    expected = rgb_keeping_lightness(lab_of_codes(spots))[:, 0]
    return np.array_equal(np.asarray(table[spots]).view(np.uint8).reshape(-1, 4)[:, :3], expected)


@functools.cache
def gamut_table() -> np.ndarray:
    """This process's table: the cached one, else built (and cached) on first use."""
    return load_or_build_table(table_cache_dir() / TABLE_NAME.format(version=cv2.__version__))


def rgb_from_table(lightness_of: np.ndarray, ab: np.ndarray, table: np.ndarray) -> np.ndarray:
    """uint8 RGB ``(H, W, 3)`` of the L of ``lightness_of`` (a Lab image) and ``ab`` ``(H, W, 2)``, looked up in
    ``table``: exactly :func:`rgb_keeping_lightness` of the joined Lab."""
    height, width = ab.shape[:2]
    codes = np.zeros((height, width, 4), np.uint8)  # L, a, b, 0: one little-endian uint32 code per pixel
    cv2.mixChannels([lightness_of, ab], [codes], [0, 0, 3, 1, 4, 2])
    rgbx = table[codes.view(np.uint32)[..., 0]]
    return cv2.cvtColor(rgbx.view(np.uint8).reshape(height, width, 4), cv2.COLOR_RGBA2RGB)
