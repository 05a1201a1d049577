"""Photos → ``shards/lab_NNN.npy`` and the shard's rows of ``images.parquet`` (docs/ARCHITECTURE.md).

Photos are read by image id from the dataset kind's photo source (for the zip kinds, straight from the zips,
only by the member names of the layout, so a stray ``../x.jpg`` is never opened), decoded at reduced size
where the photo is at least twice the target, center-cropped, resized (bilinear up to a 2× reduction, area
beyond) and converted to Lab in the OpenCV 8-bit encoding. A photo that cannot be used keeps its row,
zero-filled, with ``valid = false`` and a reason, so row ``i`` of shard ``s`` is always image
``s · shard_size + i``. ``n_tags`` and ``n_tokens`` come from the shard's own tag files, read from the tag
source and tokenized by the parent process (a fraction of a second per 10,000 images) and handed to the
worker, so ``lab_shards`` and ``tag_tokens`` depend only on the archives and run in either order, and no
worker holds the tag archive's million-entry member list. Shards are the unit of work: a process pool
converts several at once.
"""

from __future__ import annotations

import io
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline.core.color import NEUTRAL_AB, colorfulness, lab_u8_to_rgb, rgb_to_lab_u8
from pipeline.core.contract import EMPTY, INVALID_REASONS, TOO_LARGE, TRUNCATED, UNDECODABLE, UNSUPPORTED
from pipeline.core.files import atomic_path, disk_text, free_space, reports_disk_full
from pipeline.core.layout import CheckRecord, DataError, DatasetPaths, shard_key, shard_problems, write_npy_header
from pipeline.core.photos import (
    QUARTER_TURNS,
    TRANSPOSE,
    center_square,
    flatten,
    jpeg_scans_complete,
    orientation,
    to_srgb,
)
from pipeline.core.vocabulary import load_tag_encoding
from pipeline.sources.base import DatasetSpec, PhotoUnavailable, Verdict
from pipeline.tokens import tag_counts

NOT_JPEG = "not_jpeg"
"""Counted, still valid: a decodable photo in another format (a PNG named ``.jpg``)."""

CMYK = "cmyk"
"""Counted, still valid: a photo stored in CMYK (print workflows), converted to RGB."""

ROTATED = "exif_rotated"
"""Counted, still valid: a photo turned upright by its EXIF orientation."""

ICC_CONVERTED = "icc_converted"
"""Counted, still valid: a photo converted to sRGB through its embedded ICC profile."""

UNSAFE_MEMBERS = "unsafe_members"
"""Counted: entries of the photo source whose names would leave the extraction directory; never read (the tag
source's are counted by ``tag_tokens``)."""

COUNTED = (*INVALID_REASONS, NOT_JPEG, CMYK, ROTATED, ICC_CONVERTED, UNSAFE_MEMBERS)

try:
    import pillow_heif
except ImportError:  # an optional extra: HEIC photos are then counted as unsupported
    pillow_heif = None
else:
    pillow_heif.register_heif_opener()

IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", *(("HEIF",) if pillow_heif else ()))
"""Formats Pillow may identify a member as; fewer parsers exposed to untrusted bytes."""

HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"})
"""The ``ftyp`` brands of HEIC/HEIF files (phone photos)."""

JPEG_FORMATS = frozenset({"JPEG", "MPO"})
"""Pillow opens camera JPEGs that carry an MP extension as ``MPO``; they are JPEGs all the same."""

GRAYSCALE_CHROMA = 3.0
"""Mean chroma √(a² + b²) below which a photo counts as greyscale, in encoded levels (= CIE a*, b* units).

A neutral photo decodes to chroma 0–1 (JPEG chroma noise and 8-bit rounding), while a just-noticeable colour
difference is ΔE ≈ 2.3: below 3 the photo looks neutral; sepia and other toned prints (chroma ~5–15) stay
colour photos.
"""

SHARD_SPACE_MARGIN = 2**20
"""Disk bytes a shard takes beyond its Lab rows: the ``.npy`` header and its images.parquet rows (~0.2 MB
at 10,000 photos)."""

DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, Image.DecompressionBombError)
"""What Pillow raises for malformed input; anything else is a bug and stops the run."""


ROWS_SCHEMA = pa.schema(
    [
        ("image_id", pa.int64()),
        ("shard", pa.int32()),
        ("row", pa.int32()),
        ("valid", pa.bool_()),
        ("reason", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("is_grayscale", pa.bool_()),
        ("colorfulness", pa.float32()),
        ("n_tags", pa.int32()),
        ("n_tokens", pa.int32()),
    ]
)


@dataclass(frozen=True)
class DecodedImage:
    """One converted photo: Lab and RGB ``(size, size, 3)`` uint8, the source size, Pillow's format and mode."""

    lab: np.ndarray
    rgb: np.ndarray
    width: int
    height: int
    format: str
    mode: str
    rotated: bool = False
    icc_converted: bool = False

    @property
    def is_jpeg(self) -> bool:
        return self.format in JPEG_FORMATS


def _dct_scale(width: int, height: int, size: int) -> int:
    """1, 2, 4 or 8: the JPEG DCT scaling that keeps the short side at least ``size``, as ``Image.draft`` picks."""
    return next((scale for scale in (8, 4, 2) if min(width, height) // size >= scale), 1)


_REDUCED_READS = {
    1: 0,
    2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
    4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
    8: cv2.IMREAD_REDUCED_GRAYSCALE_8,
}
"""``cv2.imdecode`` flag bits of each DCT scale, OR-ed with the channels' flag (``IMREAD_COLOR_RGB``, or none
for grey)."""


def _stored_pixels(image: Image.Image, data: bytes, size: int, keep_cmyk: bool) -> np.ndarray:
    """The photo's pixels as stored (not turned upright), uint8 ``(H, W)``, ``(H, W, 3)`` RGB or ``(H, W, 4)``
    CMYK kept for its ICC profile; JPEGs DCT-scaled (:func:`_dct_scale`).

    RGB and greyscale JPEGs, nearly every photo, are decoded by OpenCV straight into a packed array: Pillow's
    decoder writes 4 bytes a pixel and costs a quarter more. Both run libjpeg-turbo with its accurate DCT and
    smooth chroma upsampling, so the pixels are the same. OpenCV returns nothing for a cut-short stream but
    fills a scan broken by a stray marker with grey, where Pillow refuses the photo: a stream whose scans are
    not whole (:func:`jpeg_scans_complete`), or one OpenCV cannot read, goes to Pillow's decoder, whose verdict
    (refused, or decoded) stands.
    """
    if image.format in JPEG_FORMATS and image.mode in ("RGB", "L") and jpeg_scans_complete(data):
        channels = cv2.IMREAD_COLOR_RGB if image.mode == "RGB" else cv2.IMREAD_GRAYSCALE
        flags = channels | _REDUCED_READS[_dct_scale(*image.size, size)] | cv2.IMREAD_IGNORE_ORIENTATION
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
        if pixels is not None:
            return pixels
    image.draft("RGB", (size, size))
    return np.asarray(flatten(image, keep_cmyk=keep_cmyk))


def _resized_square(pixels: np.ndarray, size: int) -> np.ndarray:
    """The center square of ``pixels`` resized to ``size``².

    Bilinear while the reduction is at most 2× (after DCT scaling, every photo under 16 × ``size`` on its
    short side): its two taps then reach every source pixel, at exactly 2× it is the box average, and on
    photos it lands closer to an exact area average than Pillow's box filter does, in a fifth of the time of
    either. Beyond 2× bilinear would skip pixels, so the area filter takes over.
    """
    square = center_square(pixels)
    interpolation = cv2.INTER_LINEAR if len(square) <= 2 * size else cv2.INTER_AREA
    return cv2.resize(square, (size, size), interpolation=interpolation)


_MODES = {(): "L", (3,): "RGB", (4,): "CMYK"}
"""Pillow's mode of a uint8 array by its channel axis."""


def _square_rgb(pixels: np.ndarray, size: int, icc: bytes | None, turn: int) -> tuple[np.ndarray, bool]:
    """:func:`_resized_square` of stored ``pixels`` as uint8 sRGB, turned upright by the EXIF orientation
    ``turn``, and whether ``icc`` converted it.

    The ICC transform and the turn run on the small square, not the photo: the transform is per pixel and a
    turn commutes with the center crop and the resize, so both cost ~5 times less there.
    """
    small = _resized_square(pixels, size)
    converted = False
    method = TRANSPOSE.get(turn)
    if icc or method or small.shape[2:] == (4,):
        image, converted = to_srgb(Image.fromarray(small, _MODES[small.shape[2:]]), icc)
        image = image.convert("RGB") if image.mode == "CMYK" else image
        small = np.asarray(image if method is None else image.transpose(method))
    return (cv2.cvtColor(small, cv2.COLOR_GRAY2RGB) if small.ndim == 2 else small), converted


def refusal_reason(error: Exception) -> str:
    """The contract's word for a photo Pillow could not decode: too large, truncated, or undecodable."""
    if isinstance(error, Image.DecompressionBombError):
        return TOO_LARGE
    return TRUNCATED if "truncated" in str(error).lower() else UNDECODABLE


def decode_to_lab(data: bytes, size: int) -> DecodedImage:
    """Decode one photo, center-crop it to a square, resize to ``size``² and convert to Lab (OpenCV 8-bit).

    Pillow reads the header (format, size, EXIF orientation, ICC profile) and refuses what it cannot identify.
    JPEGs at least twice the target on their short side are decoded at 1/2, 1/4 or 1/8 scale (DCT scaling),
    never below ``size``, which saves most of the decoding time of large photos. Truncated files are refused,
    never completed with grey: Pillow's ``LOAD_TRUNCATED_IMAGES`` stays off.
    """
    if not data:
        raise PhotoUnavailable(EMPTY)
    if data[4:8] == b"ftyp" and data[8:12] in HEIF_BRANDS and pillow_heif is None:
        raise PhotoUnavailable(UNSUPPORTED)
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except DECODE_ERRORS as error:
        raise PhotoUnavailable(refusal_reason(error)) from error
    with image:
        width, height = image.size
        try:
            turn = orientation(image)
            if turn in QUARTER_TURNS:
                width, height = height, width
            icc = image.info.get("icc_profile")
            pixels = _stored_pixels(image, data, size, keep_cmyk=bool(icc))
            rgb, converted = _square_rgb(pixels, size, icc, turn)
        except DECODE_ERRORS as error:
            raise PhotoUnavailable(refusal_reason(error), width, height) from error
        return DecodedImage(
            lab=rgb_to_lab_u8(rgb),
            rgb=rgb,
            width=width,
            height=height,
            format=str(image.format),
            mode=image.mode,
            rotated=turn != 1,
            icc_converted=converted,
        )


def lab_photo(lab: np.ndarray, size: int) -> DecodedImage:
    """A photo a source holds as Lab already (the contract's encoding, ``(H, W, 3)`` uint8), at ``size``².

    An all-zero row is no photo (a gap in an array); other sizes are center-cropped and resized as photos.
    """
    if not lab.any():
        raise PhotoUnavailable(EMPTY)
    height, width = lab.shape[:2]
    small = _resized_square(lab, size)
    return DecodedImage(lab=small, rgb=lab_u8_to_rgb(small), width=width, height=height, format="LAB", mode="LAB")


def mean_chroma(lab: np.ndarray) -> float:
    """Mean √(a² + b²) of an encoded Lab image, in levels (0 for a neutral image).

    OpenCV on split planes, each offset and made float in one pass: a NumPy reduction over the interleaved
    channel axis costs more than the decode.
    """
    a, b = (cv2.subtract(plane, float(NEUTRAL_AB), dtype=cv2.CV_32F) for plane in cv2.split(lab)[1:])
    return cv2.mean(cv2.magnitude(a, b))[0]


def is_grayscale(lab: np.ndarray) -> bool:
    """Whether the :func:`mean_chroma` of an encoded Lab image is below :data:`GRAYSCALE_CHROMA`.

    Per pixel ``(|a| + |b|)/√2 ≤ √(a² + b²) ≤ |a| + |b|``, so the mean offsets of a and b from neutral, one
    OpenCV pass over the interleaved image, settle nearly every photo; only one between the bounds pays for
    the exact mean (most photos take under half its time).
    """
    _, mean_a, mean_b, _ = cv2.mean(cv2.absdiff(lab, (0.0, float(NEUTRAL_AB), float(NEUTRAL_AB), 0.0)))
    if mean_a + mean_b < GRAYSCALE_CHROMA:
        return True
    if (mean_a + mean_b) / math.sqrt(2) >= GRAYSCALE_CHROMA:
        return False
    return mean_chroma(lab) < GRAYSCALE_CHROMA


@dataclass(frozen=True)
class ShardResult:
    """What :func:`convert_shard` wrote and counted; ``reasons`` has every key of :data:`COUNTED`."""

    shard: int
    path: Path
    n_images: int
    n_valid: int
    reasons: dict[str, int]
    n_grayscale: int
    mean_colorfulness: float
    seconds: float

    @property
    def summary(self) -> str:
        return f"shard {self.shard:03d}: {self.n_valid}/{self.n_images} valid in {self.seconds:.1f} s"


@dataclass(frozen=True)
class TagCounts:
    """``n_tags`` and ``n_tokens`` (before truncation) of one shard's images, int32, in row order."""

    n_tags: np.ndarray
    n_tokens: np.ndarray


def shard_tag_counts(
    spec: DatasetSpec, paths: DatasetPaths, shards: Sequence[int], vocabulary_dir: Path
) -> Iterator[tuple[int, TagCounts]]:
    """Yield each shard's :class:`TagCounts`, reading the tag archive once for all of them."""
    encoding = load_tag_encoding(vocabulary_dir)
    with spec.open_tags(paths) as tags:
        for shard in shards:
            yield shard, TagCounts(*tag_counts(tags, spec.shard_ids(shard), encoding))


def convert_shard(spec: DatasetSpec, paths: DatasetPaths, shard: int, counts: TagCounts) -> ShardResult:
    """Convert the photos of ``shard`` into ``paths.shard(shard)`` and ``paths.shard_rows(shard)``.

    Both files appear under their final names only when the whole shard succeeded; a re-run replaces them.
    Bad photos never stop the run: they are counted in ``reasons`` and keep a zero row. ``counts`` fill the
    tag columns (see :func:`shard_tag_counts`).
    """
    started = time.perf_counter()
    ids = spec.shard_ids(shard)
    n, size = len(ids), spec.image_size
    reasons = dict.fromkeys(COUNTED, 0)
    reason = [""] * n
    valid = np.zeros(n, dtype=bool)
    grayscale = np.zeros(n, dtype=bool)
    colourful = np.zeros(n, dtype=np.float32)
    dims = np.zeros((n, 2), dtype=np.int32)
    if not len(counts.n_tags) == len(counts.n_tokens) == n:
        raise ValueError(f"shard {shard}: tag counts for {len(counts.n_tags)} images, the shard holds {n}")
    with ExitStack() as stack:
        photos = stack.enter_context(spec.open_photos(paths))
        reasons[UNSAFE_MEMBERS] += photos.unsafe_entries(ids)
        lab, rows = f"the Lab photos of shard {shard:03d}", f"the images.parquet rows of shard {shard:03d}"
        shard_tmp = stack.enter_context(atomic_path(paths.shard(shard), suffix=".npy", writing=lab))
        rows_tmp = stack.enter_context(atomic_path(paths.shard_rows(shard), suffix=".parquet", writing=rows))
        # Written and closed before the rows table: a full disk then names the shard, not its rows.
        with reports_disk_full(paths.shard(shard), lab), shard_tmp.open("wb") as shard_file:
            offset, row_bytes = write_npy_header(shard_file, (n, size, size, 3), np.uint8), size * size * 3
            for row, image_id in enumerate(ids):
                try:
                    photo = photos.read(image_id)
                    image = decode_to_lab(photo, size) if isinstance(photo, bytes) else lab_photo(photo, size)
                except PhotoUnavailable as error:
                    reasons[error.reason] += 1
                    reason[row] = error.reason
                    dims[row] = error.width, error.height
                    continue
                shard_file.seek(offset + row * row_bytes)
                shard_file.write(image.lab)
                valid[row] = True
                dims[row] = image.width, image.height
                grayscale[row] = is_grayscale(image.lab)
                colourful[row] = colorfulness(image.rgb)
                reasons[NOT_JPEG] += isinstance(photo, bytes) and not image.is_jpeg
                reasons[CMYK] += image.mode == "CMYK"
                reasons[ROTATED] += image.rotated
                reasons[ICC_CONVERTED] += image.icc_converted
        columns = [
            np.arange(ids.start, ids.stop, dtype=np.int64),
            np.full(n, shard, dtype=np.int32),
            np.arange(n, dtype=np.int32),
            valid,
            reason,
            dims[:, 0],
            dims[:, 1],
            grayscale,
            colourful,
            counts.n_tags,
            counts.n_tokens,
        ]
        pq.write_table(pa.table([pa.array(c) for c in columns], schema=ROWS_SCHEMA), rows_tmp)
    n_valid = int(valid.sum())
    return ShardResult(
        shard=shard,
        path=paths.shard(shard),
        n_images=n,
        n_valid=n_valid,
        reasons=reasons,
        n_grayscale=int(grayscale.sum()),
        mean_colorfulness=float(colourful[valid].mean()) if n_valid else math.nan,
        seconds=time.perf_counter() - started,
    )


def check_free_space(spec: DatasetSpec, paths: DatasetPaths, shards: Sequence[int], workers: int) -> None:
    """Refuse, before anything is written, shards that the disk of ``paths.shards`` cannot hold: a full disk
    half-way through MIRFLICKR-1M (~150 GB of shards) would fail hours into the run.

    The need is every row of each shard (as if all photos were valid) plus :data:`SHARD_SPACE_MARGIN`, less
    the disk the shards' current files take (a re-run replaces them), plus what is held twice while shards are
    replaced: each worker's new temporary sits beside the file it replaces until it is moved into place, so up
    to ``min(workers, shards)`` of the largest current files still take their space.
    """
    row_bytes = spec.image_size**2 * 3
    rows = sum(len(spec.shard_ids(shard)) for shard in shards)
    # st_blocks: what a file takes on disk, less than its length where it is sparse (rows of bad photos)
    present = [path.stat().st_blocks * 512 for path in map(paths.shard, shards) if path.is_file()]
    held_twice = min(workers, len(shards)) * max(present, default=0)
    need = rows * row_bytes + len(shards) * SHARD_SPACE_MARGIN - sum(present) + held_twice
    free = free_space(paths.shards)
    if need > free:
        raise DataError(
            f"{paths.shards}: {len(shards)} shard(s) of {rows:,} photos need {disk_text(need)} of disk space and"
            f" {disk_text(free)} is free; free some, or move the data directory to a larger disk"
        )


def init_opencv_worker() -> None:
    """One OpenCV thread per worker: the pool already keeps every core busy."""
    cv2.setNumThreads(1)


def convert_shards(
    spec: DatasetSpec,
    paths: DatasetPaths,
    shards: Sequence[int],
    vocabulary_dir: Path,
    workers: int | None = None,
    progress: Callable[[ShardResult], None] | None = None,
) -> list[ShardResult]:
    """Convert ``shards`` in a pool of ``workers`` processes (default: one per core); results in shard order.

    Workers are spawned, not forked, so a multi-threaded caller (the Dagster run) is safe. ``progress`` is
    called in this process as each shard finishes. The first failing shard cancels the shards not started.
    A disk too small for all of them is refused first (:func:`check_free_space`).
    """
    order = list(dict.fromkeys(shards))
    if not order:
        return []
    workers = workers or os.cpu_count() or 1
    if workers < 1:
        raise ValueError(f"workers must be positive, got {workers}")
    check_free_space(spec, paths, order, min(workers, len(order)))
    results: dict[int, ShardResult] = {}
    with ProcessPoolExecutor(
        max_workers=min(workers, len(order)),
        mp_context=multiprocessing.get_context("spawn"),
        initializer=init_opencv_worker,
    ) as pool:
        futures: dict[Future[ShardResult], int] = {}
        try:
            for shard, counts in shard_tag_counts(spec, paths, order, vocabulary_dir):
                futures[pool.submit(convert_shard, spec, paths, shard, counts)] = shard
            for future in as_completed(futures):
                result = future.result()
                results[futures[future]] = result
                if progress is not None:
                    progress(result)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return [results[shard] for shard in order]


@dataclass(frozen=True)
class ConversionResult:
    """Shards converted in one run, and the checks of what they wrote: ``shard_contract`` and the kind's own."""

    shards: list[ShardResult]
    checks: dict[str, Verdict]
    shards_dir: Path

    @property
    def metadata(self) -> dict[str, object]:
        reasons: dict[str, int] = dict.fromkeys(COUNTED, 0)
        for result in self.shards:
            for reason, count in result.reasons.items():
                reasons[reason] += count
        n_images = sum(r.n_images for r in self.shards)
        return {
            "shards": ", ".join(f"{r.shard:03d}" for r in self.shards),
            "images": n_images,
            "valid": sum(r.n_valid for r in self.shards),
            "grayscale": sum(r.n_grayscale for r in self.shards),
            "images_per_s": n_images / max(sum(r.seconds for r in self.shards), 1e-9),
            **{f"count/{reason}": count for reason, count in sorted(reasons.items())},
            "path": self.shards_dir,
        }


def prepare_shards(
    spec: DatasetSpec, paths: DatasetPaths, shards: Sequence[int], vocabulary_dir: Path, **options: Any
) -> ConversionResult:
    """Convert ``shards`` (:func:`convert_shards`, which takes ``options``), check each one written against the
    shard contract, and run the kind's own checks (:meth:`DatasetSpec.verify`). Every verdict is also recorded
    with the dataset (:class:`CheckRecord`): a failed one keeps training, statistics and evaluation off the data
    until a run passes it."""
    results = convert_shards(spec, paths, shards, vocabulary_dir, **options)
    problems = []
    for result in results:
        found = "; ".join(shard_problems(paths, result.shard, spec.shard_ids(result.shard), spec.image_size))
        CheckRecord("shard_contract", "lab_shards", found, shard_key(result.shard)).write(paths)
        problems += [found] if found else []
    checks = {"shard_contract": Verdict("; ".join(problems)), **spec.verify(paths)}
    for name, verdict in checks.items():
        if name != "shard_contract":  # recorded per shard above
            CheckRecord(name, "lab_shards", verdict.problems).write(paths)
    return ConversionResult(shards=results, checks=checks, shards_dir=paths.shards)
