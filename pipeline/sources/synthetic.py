"""Kind ``synthetic``: the embedded sample, MIRFLICKR-1M-shaped archives drawn from a seed, no network needed.

Each photo is a synthetic scene (circles, rectangles, triangles, stripes over a textured grey ground) whose
foreground carries one theme colour named by a tag. Lightness is drawn independently of the colour and every
colour is in the sRGB gamut over the foreground's L range, so L alone cannot tell the colours apart: only the
tags can, which is what a tag-conditioned colorizer trained on this sample has to learn.

Every photo and tag list depends only on ``(seed, image_id)``, so each archive can be generated on its own
and byte-for-byte the same every time.
"""

from __future__ import annotations

import math
import time
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline.core.config import ConfigError
from pipeline.core.files import atomic_path
from pipeline.core.layout import DatasetPaths
from pipeline.sources.base import Progress, SourceResult
from pipeline.sources.download import verify_archive
from pipeline.sources.mirflickr1m import Mirflickr1mLayout
from pipeline.sources.zips import ZipLayoutSpec

COLOURS: dict[str, tuple[float, float]] = {
    "red": (40.0, 19.0),
    "orange": (22.0, 42.0),
    "yellow": (-4.0, 42.0),
    "green": (-37.0, 31.0),
    "teal": (-21.0, -6.0),
    "blue": (3.0, -34.0),
    "purple": (31.0, -37.0),
    "pink": (45.0, -8.0),
}
"""Theme colours → CIE Lab (a, b); each stays in the sRGB gamut for every L in :data:`FOREGROUND_L`."""

FOREGROUND_L = (40.0, 70.0)
"""Lightness range of foreground objects, the same for every colour."""

SHAPES = ("circle", "rectangle", "triangle", "stripes")
GREYSCALE_TAGS = (("bw",), ("blackandwhite",), ("bw", "blackandwhite"))
_CAMERA_TAGS = ("nikon", "canon", "Canon", "d80", "d200", "d50", "eos", "400d", "film", "lomo", "polaroid", "macro")
_FLICKR_TAGS = ("2006", "2007", "2008", "explore", "Explore", "abigfave", "interestingness", "supershot", "flickr")
_SCENE_TAGS = ("nature", "sky", "city", "street", "night", "flower", "beach", "portrait", "landscape", "light")
_THING_TAGS = ("art", "water", "trees", "architecture", "urban", "people", "dog", "cat", "sunset", "snow", "clouds")
_EVENT_TAGS = ("travel", "family", "friends", "vacation", "summer", "winter", "holiday", "party", "music", "wedding")
_MORE_TAGS = ("baby", "kids", "park", "garden", "bridge", "church", "reflection", "square", "photo", "me", "geotagged")
_PLACE_TAGS = ("london", "paris", "newyork", "nyc", "NYC", "usa", "france", "japan", "italy", "naturesfinest")
_FOREIGN_TAGS = ("café", "東京", "日本", "españa", "münchen", "straße", "zürich")
FILLER_TAGS = (
    _CAMERA_TAGS + _FLICKR_TAGS + _SCENE_TAGS + _THING_TAGS + _EVENT_TAGS + _MORE_TAGS + _PLACE_TAGS + _FOREIGN_TAGS
)
"""Flickr-style tags carrying no colour information (no colour names, no ``bw``)."""

NO_TAGS_RATE = 0.08
MANY_TAGS_RATE = 0.05
GREYSCALE_RATE = 0.03
EARLY_COLOUR_RATE = 0.85
"""How often the colour tag is placed among the first three tags."""

COVERAGE = (0.35, 0.6)
"""Target fraction of the image covered by foreground objects."""

MAX_SHAPES = 12
JPEG_QUALITY = 90
JPEG_SAMPLING = cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444
ZIP_DATE = (1980, 1, 1, 0, 0, 0)

Point = tuple[float, float]

_SUBPIXEL_BITS = 4
_SUBPIXEL = 1 << _SUBPIXEL_BITS
_PLAN_STREAM = 0
_PIXEL_STREAM = 1


@dataclass(frozen=True)
class _Plan:
    """What one photo shows and how it is tagged; ``colour`` is None for a greyscale photo."""

    colour: str | None
    kinds: tuple[str, ...]
    tags: list[str]


def _rng(spec: Spec, image_id: int, stream: int) -> np.random.Generator:
    """A generator owned by one photo, so photos never depend on each other."""
    return np.random.default_rng([spec.seed, image_id, stream])


def _insert_early(rng: np.random.Generator, tags: list[str], tag: str) -> None:
    """Put ``tag`` among the first three tags most of the time, so it usually falls within the first tokens."""
    limit = min(3, len(tags) + 1) if rng.random() < EARLY_COLOUR_RATE else len(tags) + 1
    tags.insert(int(rng.integers(0, limit)), tag)


def _plan(spec: Spec, image_id: int) -> _Plan:
    """Draw the photo's colour, shape kinds and tags from its own plan stream."""
    rng = _rng(spec, image_id, _PLAN_STREAM)
    untagged = rng.random() < NO_TAGS_RATE
    many = rng.random() < MANY_TAGS_RATE
    colour = None if rng.random() < GREYSCALE_RATE else str(rng.choice(list(COLOURS)))
    n_kinds = int(rng.integers(1, 4))
    kinds = tuple(str(kind) for kind in rng.choice(SHAPES, size=n_kinds, replace=False))
    essential = [colour] if colour is not None else list(GREYSCALE_TAGS[int(rng.integers(len(GREYSCALE_TAGS)))])
    n_tags = max(int(rng.integers(30, 61) if many else rng.integers(1, 11)), len(essential))
    free = n_tags - len(essential)
    shape_tags = [kind for kind in kinds if rng.random() < 0.7][:free]
    fillers = rng.choice(FILLER_TAGS, size=free - len(shape_tags), replace=False)
    others = [*shape_tags, *(str(tag) for tag in fillers)]
    tags = [others[int(i)] for i in rng.permutation(len(others))]
    for tag in essential:
        _insert_early(rng, tags, tag)
    return _Plan(colour=colour, kinds=kinds, tags=[] if untagged else tags)


def sample_tags(spec: Spec, image_id: int) -> list[str]:
    """Flickr-like tags of the photo ``image_id``: the colour name, shape names and filler, or nothing."""
    return _plan(spec, image_id).tags


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Low-frequency texture of about unit amplitude: coarse normal noise upsampled bicubically."""
    coarse = rng.standard_normal((int(height / cell) + 2, int(width / cell) + 2)).astype(np.float32)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


def _gradient(rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray, amplitude: float) -> np.ndarray:
    """A linear ramp in a random direction whose rise across the image is at most about ``amplitude``."""
    angle = rng.uniform(0.0, 2.0 * math.pi)
    height, width = xs.shape
    ramp = (xs / width - 0.5) * math.cos(angle) + (ys / height - 0.5) * math.sin(angle)
    return rng.uniform(-amplitude, amplitude) * ramp


def _placed(centre: Point, angle: float, points: np.ndarray) -> np.ndarray:
    """Points ``(n, 2)`` given around the origin, turned by ``angle`` and moved to ``centre``."""
    cos, sin = math.cos(angle), math.sin(angle)
    return points @ np.array([[cos, sin], [-sin, cos]]) + np.asarray(centre)


def _band(left: float, right: float, height: float) -> np.ndarray:
    """Corners of the box ``left ≤ u ≤ right``, ``|v| ≤ height / 2``."""
    return np.array([[left, -height / 2], [right, -height / 2], [right, height / 2], [left, height / 2]])


def _box_sides(rng: np.random.Generator, area: float) -> tuple[float, float]:
    """Sides of a box of ``area`` pixels with a random aspect ratio."""
    aspect = rng.uniform(0.5, 2.0)
    return math.sqrt(area * aspect), math.sqrt(area / aspect)


def _circle(rng: np.random.Generator, centre: Point, area: float, scale: float) -> list[np.ndarray]:
    turns = np.linspace(0.0, 2.0 * math.pi, 64, endpoint=False)
    return [_placed(centre, 0.0, math.sqrt(area / math.pi) * np.stack([np.cos(turns), np.sin(turns)], axis=1))]


def _rectangle(rng: np.random.Generator, centre: Point, area: float, scale: float) -> list[np.ndarray]:
    angle = rng.uniform(0.0, math.pi)
    width, height = _box_sides(rng, area)
    return [_placed(centre, angle, _band(-width / 2, width / 2, height))]


def _triangle(rng: np.random.Generator, centre: Point, area: float, scale: float) -> list[np.ndarray]:
    turns = rng.uniform(0.0, 2.0 * math.pi) + np.array([0.0, 2.1, 4.2]) + rng.uniform(-0.3, 0.3, size=3)
    return [_placed(centre, 0.0, math.sqrt(area / 1.3) * np.stack([np.cos(turns), np.sin(turns)], axis=1))]


def _stripes(rng: np.random.Generator, centre: Point, area: float, scale: float) -> list[np.ndarray]:
    """Parallel bands filling half of a box twice ``area``, so about ``area`` pixels are covered."""
    angle = rng.uniform(0.0, math.pi)
    width, height = _box_sides(rng, 2.0 * area)
    period = max(6.0, rng.uniform(0.05, 0.12) * scale)
    lefts = np.arange(-width / 2, width / 2, period)
    rights = np.minimum(lefts + period / 2, width / 2)
    return [_placed(centre, angle, _band(left, right, height)) for left, right in zip(lefts, rights, strict=True)]


_DRAW: dict[str, Callable[[np.random.Generator, Point, float, float], list[np.ndarray]]] = {
    "circle": _circle,
    "rectangle": _rectangle,
    "triangle": _triangle,
    "stripes": _stripes,
}


def _layout_shapes(rng: np.random.Generator, kinds: tuple[str, ...], height: int, width: int) -> np.ndarray:
    """Label map (0 = background, k = k-th shape): every kind once, then more until the coverage target."""
    pixels = height * width
    target = rng.uniform(*COVERAGE)
    labels = np.zeros((height, width), dtype=np.uint8)
    for index in range(MAX_SHAPES):
        covered = np.count_nonzero(labels) / pixels
        if index >= len(kinds) and covered >= target:
            break
        if index < len(kinds):
            area = target / len(kinds) * rng.uniform(0.8, 1.1) * pixels
        else:
            area = max(target - covered, 0.03) * rng.uniform(1.0, 1.4) * pixels
        centre = (rng.uniform(0.15, 0.85) * width, rng.uniform(0.15, 0.85) * height)
        polygons = _DRAW[kinds[index % len(kinds)]](rng, centre, area, min(height, width))
        fixed = [np.rint(polygon * _SUBPIXEL).astype(np.int32) for polygon in polygons]
        cv2.fillPoly(labels, fixed, index + 1, lineType=cv2.LINE_8, shift=_SUBPIXEL_BITS)
    return labels


def _render(spec: Spec, image_id: int, kinds: tuple[str, ...], colour: str | None) -> np.ndarray:
    """Draw L and the shapes from the pixel stream, never from the colour, then paint the foreground."""
    rng = _rng(spec, image_id, _PIXEL_STREAM)
    size = (spec.height, spec.width)
    ys, xs = np.mgrid[0 : size[0], 0 : size[1]].astype(np.float32)
    labels = _layout_shapes(rng, kinds, *size)
    grain = rng.standard_normal(size, dtype=np.float32)
    background = (
        rng.uniform(20.0, 90.0)
        + _gradient(rng, xs, ys, 25.0)
        + 5.0 * _smooth_noise(rng, *size, cell=max(4.0, min(size) / 6))
        + 2.0 * grain
    )
    offsets = np.concatenate([[0.0], rng.uniform(-6.0, 6.0, size=MAX_SHAPES)]).astype(np.float32)
    foreground = (
        rng.uniform(47.0, 63.0)
        + offsets[labels]
        + _gradient(rng, xs, ys, 10.0)
        + 3.0 * _smooth_noise(rng, *size, cell=max(3.0, min(size) / 10))
        + 1.5 * grain
    )
    inside = labels > 0
    lab = np.zeros((*size, 3), dtype=np.float32)
    lab[..., 0] = np.where(inside, np.clip(foreground, *FOREGROUND_L), np.clip(background, 3.0, 97.0))
    lab[inside, 1:] = COLOURS[colour] if colour is not None else (0.0, 0.0)
    rgb = cv2.cvtColor(lab, cv2.COLOR_Lab2RGB)
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def render_scene(spec: Spec, image_id: int, colour: str | None) -> np.ndarray:
    """The scene of ``image_id`` with its foreground in ``colour`` (None: grey); its L does not depend on it.

    uint8 RGB ``(height, width, 3)``; the same scene can be compared across colours.
    """
    return _render(spec, image_id, _plan(spec, image_id).kinds, colour)


def sample_image(spec: Spec, image_id: int) -> np.ndarray:
    """The photo ``image_id`` as uint8 RGB ``(height, width, 3)``, in the colour its tags name."""
    return render_scene(spec, image_id, _plan(spec, image_id).colour)


def _encode_jpeg(rgb: np.ndarray) -> bytes:
    """JPEG without chroma subsampling: 4:2:0 would wash thin stripes' colour into the grey ground."""
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, JPEG_SAMPLING]
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return encoded.tobytes()


def _write_zip(dest: Path, members: Iterable[tuple[str, bytes]], compression: int) -> int:
    """Write ``members`` in order with fixed timestamps and attributes, so equal input gives equal bytes."""
    count = 0
    with atomic_path(dest, suffix=".zip") as tmp, zipfile.ZipFile(tmp, "w") as archive:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.compress_type = compression
            info.create_system = 3
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
            count += 1
    return count


def write_image_archive(spec: Spec, archive: str, dest: Path) -> int:
    """Write the image archive ``archive`` (e.g. ``images0``) to the zip file ``dest``; returns photos written.

    JPEGs are stored uncompressed, as in the published archives: deflating them gains nothing.
    """
    members = (
        (spec.image_member(image_id), _encode_jpeg(sample_image(spec, image_id)))
        for image_id in spec.archive_ids(archive)
    )
    return _write_zip(dest, members, zipfile.ZIP_STORED)


def write_tags_archive(spec: Spec, dest: Path) -> int:
    """Write ``tags.zip`` (one UTF-8 tag per line; an untagged photo keeps an empty file) to ``dest``."""
    members = (
        (spec.tag_member(image_id), "".join(f"{tag}\n" for tag in sample_tags(spec, image_id)).encode())
        for image_id in range(spec.n_images)
    )
    return _write_zip(dest, members, zipfile.ZIP_DEFLATED)


@dataclass(frozen=True, kw_only=True)
class Spec(Mirflickr1mLayout, ZipLayoutSpec):
    """The synthetic sample in MIRFLICKR-1M's layout: ``seed`` fixes every photo, drawn ``width``×``height``."""

    seed: int = 0
    width: int = 320
    height: int = 240

    kind = "synthetic"

    def check(self, source: str) -> None:
        super().check(source)
        if self.seed < 0:
            raise ConfigError(f"{source}: 'seed' must be a non-negative integer, got {self.seed!r}")
        for key in ("width", "height"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{source}: '{key}' must be a positive integer, got {getattr(self, key)!r}")

    def obtain(self, archive: str, paths: DatasetPaths, base_url: str | None, progress: Progress) -> SourceResult:
        """Draw the archive: the same bytes every time, so a re-materialization changes nothing."""
        started = time.perf_counter()
        dest = paths.archive(archive)
        if archive == self.tags_archive:
            count = write_tags_archive(self, dest)
        elif archive in self.archives():
            count = write_image_archive(self, archive, dest)
        else:
            raise ConfigError(f"{self.name}: no archive {archive!r}; archives: {[*self.archives(), self.tags_archive]}")
        md5 = verify_archive(dest, None)
        return SourceResult(
            path=dest,
            figures={
                "members": count,
                "size_bytes": dest.stat().st_size,
                "md5": md5,
                "duration_s": time.perf_counter() - started,
            },
        )
