"""Colour a folder's photos at full size, incrementally: which photos need colouring, where each output goes,
reading and writing them, and the manifest that remembers what was coloured with what.

Outputs mirror the folder's tree under ``<data>/<dataset>/colorized/<run>/``. A photo is coloured again only
when something its output depends on changed: the photo's bytes (SHA-1), the checkpoint's (SHA-256), its tag
ids, or the output settings; each shard of the folder keeps its own manifest (``manifest_<shard>.parquet``), so
the shards' partitions run in parallel without sharing a file. Nothing here knows the model: the caller passes
the function that colours a batch of photos (:mod:`model.colorize`).
"""

from __future__ import annotations

import hashlib
import io
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Protocol

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline.convert import DECODE_ERRORS, refusal_reason
from pipeline.core.config import ConfigError
from pipeline.core.contract import EMPTY, MISSING, TOO_LARGE
from pipeline.core.files import atomic_path
from pipeline.core.layout import PARQUET_ERRORS
from pipeline.core.photos import ORIENTATION_TAG, center_square, srgb_pixels
from pipeline.core.render import CollageRow, render_collage
from pipeline.sources.base import MAX_PHOTO_BYTES
from pipeline.sources.folder import inside

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
    except DECODE_ERRORS as error:
        raise Refused(refusal_reason(error), str(error)) from error
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


DEPENDS_ON = ("output", "sha1", "checkpoint_sha256", "tags", "settings")
"""What an output is: its name, and what it is made from (the photo's bytes, the checkpoint's, the tag ids and
the output settings)."""


def up_to_date(old: Mapping[str, object], new: Mapping[str, object], out_dir: Path) -> bool:
    """Whether the output a manifest row ``old`` records is what colouring the photo as ``new`` says would
    write: made from the same things, and still there."""
    return all(old[key] == new[key] for key in DEPENDS_ON) and (out_dir / str(old["output"])).is_file()


class Colourer(Protocol):
    """What colouring needs of a model (:class:`model.colorize.BatchColourer` is one): the checkpoint's hash, the
    key of a tag set as the checkpoint reads it, and colours for a batch of photos."""

    checkpoint_sha256: str

    def tag_key(self, tags: Sequence[str]) -> str: ...

    def colour(self, photos: Sequence[np.ndarray], tags: Sequence[Sequence[str]]) -> list[np.ndarray]: ...


@dataclass
class ShardReport:
    """What one shard's colouring did: photos coloured (with their outputs), skipped as up to date, refused
    (by reason), and outputs whose photos left the folder (deleted with ``prune``)."""

    coloured: list[tuple[str, str]] = field(default_factory=list)
    skipped: int = 0
    refused: dict[str, list[str]] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    pruned: bool = False
    bytes_written: int = 0


@dataclass(frozen=True)
class _Read:
    """A photo read for colouring, or the reason it is skipped or refused."""

    path: str
    row: dict[str, object]
    photo: Photo | None = None
    refused: str = ""
    up_to_date: bool = False


def colour_shard(
    root: Path,
    paths: Sequence[str],
    out_dir: Path,
    shard: int,
    colourer: Colourer,
    tags_of: Callable[[str], list[str]],
    settings: OutputSettings,
    *,
    prune: bool = False,
    batch_size: int = 8,
    workers: int = 2,
) -> ShardReport:
    """Colour the photos ``paths`` (relative to ``root``) of one shard into ``out_dir``, skipping those whose
    output is up to date, and record every output in the shard's manifest.

    Reading (bytes, SHA-1, decoding), colouring and writing run on ``workers`` threads, reads at most two batches
    ahead and at most ``workers`` batches coloured at once, so memory stays flat in the number of photos. A photo
    is read by its path, so a changed photo is coloured anew. Rows of photos no longer in ``paths`` or on disk
    are reported as removed (their outputs deleted with ``prune``). The manifest is written after every batch:
    an interrupted run loses at most the batches in flight.
    """
    manifest_file = manifest_path(out_dir, shard)
    previous = {row["path"]: row for row in read_colorized_manifest(manifest_file).to_dict("records")}
    names = output_names(paths, settings.suffix)
    present = [path for path in paths if (root / path).is_file()]
    rows = {path: row for path, row in previous.items() if path in present}
    report = ShardReport(removed=sorted(row["output"] for path, row in previous.items() if path not in rows))
    if prune:
        for output in report.removed:
            (out_dir / output).unlink(missing_ok=True)
        report.pruned = True
    else:
        rows |= {path: row for path, row in previous.items() if path not in present}  # kept until pruned

    real_root = root.resolve()

    def read(path: str) -> _Read:
        """As the folder kind reads a photo: a file gone, unreadable or linked out of the folder is missing, one
        over the size limit too large (unread); both are refused, not fatal to the shard."""
        file = root / path
        try:
            stat, within = file.stat(), inside(file, real_root)
        except OSError:
            stat, within = None, False
        if stat is None or not within:
            return _Read(path, {}, refused=MISSING)
        if stat.st_size > MAX_PHOTO_BYTES:
            return _Read(path, {}, refused=TOO_LARGE)
        key = colourer.tag_key(tags_of(path))
        old = previous.get(path)
        row: dict[str, object] = {"path": path, "output": names[path], "size": stat.st_size,
                                  "mtime_ns": stat.st_mtime_ns, "checkpoint_sha256": colourer.checkpoint_sha256,
                                  "tags": key, "settings": settings.key}  # fmt: skip
        unchanged = old is not None and (old["size"], old["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns)
        if unchanged and up_to_date(old, row | {"sha1": old["sha1"]}, out_dir):  # same size and mtime: not read
            return _Read(path, old, up_to_date=True)
        try:
            data = file.read_bytes()
        except OSError:
            return _Read(path, {}, refused=MISSING)
        row["sha1"] = hashlib.sha1(data).hexdigest()
        if old is not None and up_to_date(old, row, out_dir):  # touched, not changed
            return _Read(path, old | row, up_to_date=True)
        try:
            return _Read(path, row, read_photo(data))
        except Refused as error:
            return _Read(path, row, refused=error.reason)

    def colour_and_write(batch: list[_Read]) -> list[tuple[int, int, int]]:
        """Colour a batch and write its outputs: each one's height, width and bytes."""
        coloured = colourer.colour([item.photo.rgb for item in batch], [tags_of(item.path) for item in batch])
        sizes = []
        for item, rgb in zip(batch, coloured, strict=True):
            written = write_output(rgb, item.photo.exif, out_dir / names[item.path], settings)
            sizes.append((*rgb.shape[:2], written))
        return sizes

    def record(batch: list[_Read], done: Future[list[tuple[int, int, int]]]) -> None:
        for item, (height, width, written) in zip(batch, done.result(), strict=True):
            report.bytes_written += written
            renamed = previous.get(item.path, {}).get("output")
            if renamed is not None and renamed != names[item.path]:  # a photo of the same stem arrived
                (out_dir / str(renamed)).unlink(missing_ok=True)
            rows[item.path] = item.row | {"width": width, "height": height}
            report.coloured.append((item.path, names[item.path]))
        write_colorized_manifest(manifest_file, pd.DataFrame(list(rows.values()), columns=MANIFEST_SCHEMA.names))

    # Batches are coloured and written on the pool's threads, up to `workers` at once, while this thread keeps
    # the reads two batches ahead: every core busy, and memory bounded by the batches in flight.
    with ThreadPoolExecutor(workers, thread_name_prefix="colour") as pool:
        pending = deque(pool.submit(read, path) for path in present[: 2 * batch_size])
        queued = iter(present[2 * batch_size :])
        in_flight: deque[tuple[list[_Read], Future[list[tuple[int, int, int]]]]] = deque()
        while pending:
            batch: list[_Read] = []
            while pending and len(batch) < batch_size:
                item = pending.popleft().result()
                if (following := next(queued, None)) is not None:
                    pending.append(pool.submit(read, following))
                if item.up_to_date:
                    report.skipped += 1
                    rows[item.path] = item.row
                elif item.refused:
                    report.refused.setdefault(item.refused, []).append(item.path)
                    rows.pop(item.path, None)
                else:
                    batch.append(item)
            if batch:
                in_flight.append((batch, pool.submit(colour_and_write, batch)))
            while len(in_flight) >= workers or (in_flight and not pending):
                record(*in_flight.popleft())
    write_colorized_manifest(manifest_file, pd.DataFrame(list(rows.values()), columns=MANIFEST_SCHEMA.names))
    return report


GALLERY_TILE = 256
GALLERY_COLUMNS = ("before", "coloured")


def write_gallery(root: Path, out_dir: Path, pairs: Sequence[tuple[str, str]], path: Path) -> Path:
    """A before/after collage of ``pairs`` (photo, output): each photo as given (grey scans stay grey) beside its
    colouring, centre squares shrunk to the tile, the photo's path as caption."""

    def square(file: Path) -> np.ndarray:
        with Image.open(file) as image:
            image.draft("RGB", (2 * GALLERY_TILE, 2 * GALLERY_TILE))  # a large JPEG decoded at a fraction
            pixels = center_square(srgb_pixels(image))
        return cv2.resize(np.ascontiguousarray(pixels), (GALLERY_TILE, GALLERY_TILE), interpolation=cv2.INTER_AREA)

    rows = [CollageRow((square(root / photo), square(out_dir / output)), photo) for photo, output in pairs]
    return render_collage(rows, path, tile=GALLERY_TILE, columns=GALLERY_COLUMNS)
