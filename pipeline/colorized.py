"""Colour a folder's photos at full size, incrementally: which photos need colouring, where each output goes,
reading and writing them, and the manifest that remembers what was coloured with what.

Outputs mirror the folder's tree under ``<data>/<dataset>/colorized/<run>/``. A photo is coloured again only
when something its output depends on changed: the photo's bytes (SHA-1), the checkpoint's (SHA-256), its tag
ids, or the output settings; each shard of the folder keeps its own manifest (``manifest_<shard>.parquet``), so
the shards' partitions run in parallel without sharing a file. Nothing here knows the model: the caller passes
the function that colours a batch of photos (:mod:`model.colorize`).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline.core.config import ConfigError
from pipeline.core.contract import EMPTY, TOO_LARGE, TRUNCATED, UNDECODABLE
from pipeline.core.files import atomic_path
from pipeline.core.layout import PARQUET_ERRORS
from pipeline.core.photos import ORIENTATION_TAG, srgb_pixels

FORMATS = {"jpeg": ".jpg", "png": ".png"}
"""Output formats and their file suffixes."""
DEFAULT_QUALITY = 95

MANIFEST_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("output", pa.string()),
        ("size", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("sha1", pa.string()),
        ("checkpoint_sha256", pa.string()),
        ("tags", pa.string()),
        ("settings", pa.string()),
        ("width", pa.int64()),
        ("height", pa.int64()),
    ]
)
"""One row per coloured photo: its path in the folder, its output's path under the run's directory, what the
output was made from (the photo's stat and SHA-1, the checkpoint's SHA-256, the tag ids, the settings) and
its size."""


class ColorizedError(ConfigError):
    """A colouring setting is impossible; the message names it."""


@dataclass(frozen=True)
class OutputSettings:
    """How outputs are written: ``jpeg`` (``quality`` 1-100) or ``png``."""

    format: str = "jpeg"
    quality: int = DEFAULT_QUALITY

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ColorizedError(f"format: {self.format!r} is not one of {', '.join(FORMATS)}")
        if not 1 <= self.quality <= 100:
            raise ColorizedError(f"quality: must be 1 to 100, got {self.quality}")

    @property
    def suffix(self) -> str:
        return FORMATS[self.format]

    @property
    def key(self) -> str:
        """What of the settings an output depends on, as the manifest records it."""
        return f"jpeg q{self.quality}" if self.format == "jpeg" else "png"


def output_names(paths: Sequence[str], suffix: str) -> dict[str, str]:
    """Each photo's output path (relative, POSIX): the same folders, ``<stem><suffix>``, so ``a/b.png`` becomes
    ``a/b.jpg``. Photos whose outputs would meet (``a.jpg`` and ``a.png``; names differing in case only, which
    some filesystems take for one) keep their whole name instead, ``a.png.jpg``, and a name still taken gets a
    number, ``<name>_2.jpg``: no two photos ever share an output. Given the sorted paths, the names are stable.
    """
    plain = {path: str(PurePosixPath(path).with_suffix(suffix)) for path in paths}
    meeting: dict[str, int] = {}
    for output in plain.values():
        meeting[output.casefold()] = meeting.get(output.casefold(), 0) + 1
    names: dict[str, str] = {}
    taken: set[str] = set()
    for path in sorted(paths):
        name = plain[path] if meeting[plain[path].casefold()] == 1 else f"{path}{suffix}"
        number = 1
        while name.casefold() in taken:
            number += 1
            name = f"{path}_{number}{suffix}"
        taken.add(name.casefold())
        names[path] = name
    return names


@dataclass(frozen=True)
class Photo:
    """A photo as read for colouring: upright sRGB pixels at full size, and the EXIF to carry over (date,
    camera; the orientation reset, since the pixels are turned upright)."""

    rgb: np.ndarray
    exif: bytes


class Refused(Exception):
    """A photo that cannot be coloured; ``reason`` is one of the contract's words (``too_large``, …)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def read_photo(data: bytes) -> Photo:
    """Decode a photo's bytes whole (Pillow's decompression-bomb guard on): greyscale and 16-bit photos become
    8-bit RGB; a photo that cannot be decoded raises :class:`Refused` with its reason."""
    if not data:
        raise Refused(EMPTY)
    try:
        with Image.open(io.BytesIO(data)) as image:
            exif = image.getexif()
            rgb = srgb_pixels(image)
    except Image.DecompressionBombError as error:
        raise Refused(TOO_LARGE, str(error)) from error
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as error:
        reason = TRUNCATED if "truncated" in str(error).lower() else UNDECODABLE
        raise Refused(reason, str(error)) from error
    if ORIENTATION_TAG in exif:
        exif[ORIENTATION_TAG] = 1
    return Photo(rgb, exif.tobytes() if len(exif) else b"")


def write_output(rgb: np.ndarray, exif: bytes, path: Path, settings: OutputSettings) -> int:
    """Write one coloured photo atomically, with the original's EXIF; its size in bytes."""
    with atomic_path(path, suffix=settings.suffix, writing="a coloured photo") as tmp:
        options: dict[str, object] = {"exif": exif} if exif else {}
        if settings.format == "jpeg":
            options |= {"quality": settings.quality, "subsampling": 0}  # 4:4:4: the colour is the point
        Image.fromarray(rgb, mode="RGB").save(tmp, format=settings.format.upper(), **options)
    return path.stat().st_size


def manifest_path(out_dir: Path, shard: int) -> Path:
    return out_dir / f"manifest_{shard:03d}.parquet"


def read_colorized_manifest(path: Path) -> pd.DataFrame:
    """A shard's manifest; empty when there is none, or when it cannot be read (then everything is coloured
    again, which a damaged record cannot make wrong)."""
    try:
        return pq.read_table(path, schema=MANIFEST_SCHEMA).to_pandas() if path.is_file() else _empty()
    except PARQUET_ERRORS:
        return _empty()


def _empty() -> pd.DataFrame:
    return MANIFEST_SCHEMA.empty_table().to_pandas()


def write_colorized_manifest(path: Path, rows: pd.DataFrame) -> None:
    with atomic_path(path, suffix=".parquet", writing="the colorized manifest") as tmp:
        pq.write_table(pa.Table.from_pandas(rows[MANIFEST_SCHEMA.names], MANIFEST_SCHEMA, preserve_index=False), tmp)


def up_to_date(row: pd.Series, sha1: str, checkpoint_sha256: str, tags: str, settings: str, out_dir: Path) -> bool:
    """Whether a manifest row's output still is what colouring the photo now would write."""
    current = (row["sha1"], row["checkpoint_sha256"], row["tags"], row["settings"])
    return current == (sha1, checkpoint_sha256, tags, settings) and (out_dir / row["output"]).is_file()
