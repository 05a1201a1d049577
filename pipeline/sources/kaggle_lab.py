"""Kind ``kaggle_lab``: the Kaggle "image-colorization" arrays of MIRFLICKR-25k, already in Lab.

As published (``shravankumar9892/image-colorization``): ``l/gray_scale.npy`` uint8 ``(N, 224, 224)`` and
``ab/ab/ab1.npy``, ``ab2.npy``, … uint8 ``(n_k, 224, 224, 2)`` whose rows add up to N, in the OpenCV 8-bit
encoding. They are read through memory maps (3.7 GB: never loaded whole), one row at a time. Tags come from
MIRFLICKR-25k's own tag files in ``mirflickr25k.zip``, taken from the ``mirflickr25k`` dataset's ``raw/`` when
it has the archive, otherwise downloaded the same way. The rows are taken to be ``im1 … imN``; the
``row_order`` check compares a seeded sample of them with the photos in that zip.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from pipeline.core.color import rgb_to_lab_u8
from pipeline.core.config import ConfigError
from pipeline.core.contract import MISSING
from pipeline.core.files import atomic_write_text
from pipeline.core.layout import DatasetPaths, npy_header
from pipeline.core.photos import center_square
from pipeline.datasets import resolve_repo_path
from pipeline.sources import download
from pipeline.sources.base import DatasetSpec, PhotoUnavailable, Progress, SourceResult, Verdict
from pipeline.sources.mirflickr25k import ARCHIVE as TAGS_ARCHIVE
from pipeline.sources.mirflickr25k import Spec as Mirflickr25k
from pipeline.sources.zips import ZipTags, open_archive

ARCHIVE = "arrays"
KAGGLE_DATASET = "shravankumar9892/image-colorization"
L_FILE = Path("l") / "gray_scale.npy"
AB_DIR = Path("ab") / "ab"
AB_FILE = re.compile(r"ab(\d+)\.npy")
SOURCE_RECORD = "arrays.json"
"""``raw/arrays.json``: where the verified arrays are (a local folder or kagglehub's cache) and their shapes."""

ROW_ORDER_SAMPLE = 32
MATCH_LEVELS = 12.0
"""Mean |ΔL| (encoded levels) under which a row matches its photo: resampling and JPEG decoders differ by a few
levels, another photo by tens."""
GEOMETRIES = ("crop", "resize")
"""How the arrays may have been made from the photos: a center crop then a resize, or a plain resize."""


def _memmap(path: Path, shape_hint: str) -> np.ndarray:
    """The array at ``path``, memory-mapped; a missing or damaged file is refused naming the expected shape."""
    problem = npy_header(path)[2]
    if problem:
        raise ConfigError(f"{path}: {problem}; expected uint8 {shape_hint} as published")
    return np.load(path, mmap_mode="r")


@dataclass(frozen=True)
class Arrays:
    """The published arrays, opened: L rows and the ab files in order, checked against each other."""

    lightness: np.ndarray
    ab: list[np.ndarray]
    files: list[Path]

    @classmethod
    def open(cls, root: Path) -> Arrays:
        lightness = _memmap(root / L_FILE, "(N, S, S)")
        if lightness.dtype != np.uint8 or lightness.ndim != 3 or lightness.shape[1] != lightness.shape[2]:
            raise ConfigError(f"{root / L_FILE}: {lightness.dtype} {lightness.shape}, expected uint8 (N, S, S)")
        side = lightness.shape[1]
        names = sorted(
            (p for p in (root / AB_DIR).glob("ab*.npy") if AB_FILE.fullmatch(p.name)),
            key=lambda p: int(AB_FILE.fullmatch(p.name)[1]),
        )
        if not names:
            raise ConfigError(f"{root / AB_DIR}: no ab1.npy, ab2.npy, …: expected uint8 (n, {side}, {side}, 2)")
        ab = [_memmap(name, f"(n, {side}, {side}, 2)") for name in names]
        for name, array in zip(names, ab, strict=True):
            if array.dtype != np.uint8 or array.shape[1:] != (side, side, 2):
                raise ConfigError(f"{name}: {array.dtype} {array.shape}, expected uint8 (n, {side}, {side}, 2)")
        total = sum(len(array) for array in ab)
        if total != len(lightness):
            raise ConfigError(f"{root / AB_DIR}: {total:,} ab rows for {len(lightness):,} L rows; they must be equal")
        return cls(lightness=lightness, ab=ab, files=[root / L_FILE, *names])

    def row(self, image_id: int) -> np.ndarray:
        """Row ``image_id`` as uint8 Lab ``(S, S, 3)``: its L, and its a, b from the ab file that holds it."""
        rest = image_id
        for array in self.ab:
            if 0 <= rest < len(array):
                return np.dstack((self.lightness[image_id], array[rest]))
            rest -= len(array)
        raise PhotoUnavailable(MISSING)


@dataclass(frozen=True, kw_only=True)
class Spec(DatasetSpec):
    """The arrays in the folder ``path`` (``TAGCOLOR_<NAME>_PATH``), or fetched with ``kagglehub`` when empty;
    the tag archive from the dataset ``tags_from`` or from ``base_url``."""

    path: str = ""
    n_images: int = 0
    shard_size: int = 10_000
    train_config: str = "mirflickr25k_1gpu"
    tags_from: str = "mirflickr25k"
    base_url: str = "https://press.liacs.nl/mirflickr/mirflickr25k.v3b/"
    md5: dict[str, str] = field(default_factory=lambda: {TAGS_ARCHIVE: "a23d0a8564ee84cda5622a6c2f947785"})

    kind = "kaggle_lab"
    tags_archive = TAGS_ARCHIVE
    derived = ("n_images",)
    checks = {"row_order": "A seeded sample of rows matches MIRFLICKR-25k's im<n>.jpg: the rows are im1 … imN."}

    def check(self, source: str) -> None:
        if self.shard_size <= 0 or self.image_size <= 0:
            raise ConfigError(f"{source}: 'shard_size' and 'image_size' must be positive integers")
        try:
            download.check_url(self.base_url)
        except download.UnsupportedURLError as error:
            raise ConfigError(f"{source}: 'base_url': {error}") from error

    @property
    def default_url(self) -> str:
        return self.base_url

    def archives(self) -> list[str]:
        return [ARCHIVE]

    def archive_of(self, image_id: int) -> str:
        return ARCHIVE

    def arrays_root(self, paths: DatasetPaths) -> Path | None:
        """Where the arrays are: ``path``, else where ``archives`` last found them (kagglehub's cache)."""
        if self.path:
            return resolve_repo_path(self.path)
        record = paths.raw / SOURCE_RECORD
        return Path(json.loads(record.read_text())["path"]) if record.is_file() else None

    def on_disk(self, paths: DatasetPaths) -> Spec:
        root = self.arrays_root(paths)
        lightness = root / L_FILE if root else None
        shape, _, problem = npy_header(lightness) if lightness else ((), None, "none")
        n_images = 0 if problem else shape[0]  # a damaged array is reported by archives, not while loading
        return dataclasses.replace(self, n_images=n_images)

    def obtain(self, archive: str, paths: DatasetPaths, base_url: str | None, progress: Progress) -> SourceResult:
        """Check the arrays (fetched with kagglehub first when no ``path`` is set) and record where they are."""
        if archive == TAGS_ARCHIVE:
            return self.obtain_tags(paths, base_url, progress)
        started = time.perf_counter()
        root = resolve_repo_path(self.path) if self.path else fetch_with_kagglehub(self.name)
        arrays = Arrays.open(root)
        record = {"path": str(root), "n_images": len(arrays.lightness), "files": [str(p) for p in arrays.files]}
        atomic_write_text(paths.raw / SOURCE_RECORD, json.dumps(record, indent=2) + "\n")
        return SourceResult(
            path=paths.raw / SOURCE_RECORD,
            figures={
                "arrays": str(root),
                "images": len(arrays.lightness),
                "ab_files": len(arrays.ab),
                "size_bytes": sum(p.stat().st_size for p in arrays.files),
                "duration_s": time.perf_counter() - started,
            },
        )

    def tags_zip(self, paths: DatasetPaths) -> Path:
        """``mirflickr25k.zip``: this dataset's own copy, else the ``tags_from`` dataset's."""
        own = paths.archive(TAGS_ARCHIVE)
        shared = DatasetPaths(paths.root.parent / self.tags_from).archive(TAGS_ARCHIVE)
        return own if own.is_file() or not shared.is_file() else shared

    def obtain_tags(self, paths: DatasetPaths, base_url: str | None, progress: Progress) -> SourceResult:
        """Reuse the ``tags_from`` dataset's archive when it has one, else download it into ``raw/``."""
        found = self.tags_zip(paths)
        if found.is_file():
            return SourceResult(path=found, figures={"reused": found != paths.archive(TAGS_ARCHIVE)})
        return self.photos_layout().obtain(TAGS_ARCHIVE, paths, base_url, progress)

    def photos_layout(self) -> Mirflickr25k:
        """MIRFLICKR-25k's own layout, whose archive holds the tag files and the photos the rows came from."""
        return Mirflickr25k(
            name=self.name, n_images=max(self.n_images, 1), shard_size=self.shard_size, base_url=self.base_url,
            md5=self.md5,
        )  # fmt: skip

    def arrays(self, paths: DatasetPaths) -> Arrays:
        root = self.arrays_root(paths)
        if root is None:
            raise FileNotFoundError(f"no arrays recorded: materialize {self.name}/archives first")
        return Arrays.open(root)

    def open_photos(self, paths: DatasetPaths) -> ArrayPhotos:
        return ArrayPhotos(self.arrays(paths))

    def open_tags(self, paths: DatasetPaths) -> ZipTags:
        return ZipTags(open_archive(self.tags_zip(paths), f"{self.name}/tags_archive"), self.photos_layout())

    def verify(self, paths: DatasetPaths) -> dict[str, Verdict]:
        report = row_order(self, paths)
        problems = f"{report.mismatches} of {report.checked} sampled rows match no geometry of their im<n>.jpg"
        figures = {"checked": report.checked, "mismatches": report.mismatches, "geometry": report.geometry}
        figures |= {f"fits_{geometry}": fits for geometry, fits in report.fits.items()}
        return {"row_order": Verdict(problems if report.mismatches else "", figures)}


class ArrayPhotos:
    """Rows of the arrays as photos already in Lab; an all-zero row is refused by the conversion."""

    def __init__(self, arrays: Arrays) -> None:
        self._arrays = arrays

    def read(self, image_id: int) -> np.ndarray:
        if not 0 <= image_id < len(self._arrays.lightness):
            raise PhotoUnavailable(MISSING)
        return self._arrays.row(image_id)

    def unsafe_entries(self, ids: range) -> int:
        return 0

    def __enter__(self) -> ArrayPhotos:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


@dataclass(frozen=True)
class RowOrder:
    """How a seeded sample of rows compares with the photos: rows checked, how many fit each geometry, and how
    many fit neither."""

    checked: int
    fits: dict[str, int]
    mismatches: int

    @property
    def geometry(self) -> str:
        return max(self.fits, key=self.fits.__getitem__)


def row_order(spec: Spec, paths: DatasetPaths, sample: int = ROW_ORDER_SAMPLE, seed: int = 0) -> RowOrder:
    """Compare the L of sampled rows with the L of ``im<id + 1>.jpg`` under both geometries."""
    arrays, layout = spec.arrays(paths), spec.photos_layout()
    n = len(arrays.lightness)
    ids = np.sort(np.random.default_rng(seed).choice(n, size=min(sample, n), replace=False))
    side = arrays.lightness.shape[1]
    fits = dict.fromkeys(GEOMETRIES, 0)
    mismatches = 0
    with open_archive(spec.tags_zip(paths), f"{spec.name}/tags_archive") as archive:
        for image_id in ids.tolist():
            try:
                data = archive.read(layout.image_member(image_id))
            except KeyError:
                mismatches += 1
                continue
            rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            kaggle = arrays.lightness[image_id].astype(np.float32)
            matched = False
            for geometry in GEOMETRIES:
                lightness = rgb_to_lab_u8(_geometry(rgb, side, geometry))[..., 0].astype(np.float32)
                if np.abs(lightness - kaggle).mean() < MATCH_LEVELS:
                    fits[geometry] += 1
                    matched = True
            mismatches += not matched
    return RowOrder(checked=len(ids), fits=fits, mismatches=mismatches)


def _geometry(rgb: np.ndarray, side: int, geometry: str) -> np.ndarray:
    if geometry == "crop":
        rgb = center_square(rgb)
    return cv2.resize(np.ascontiguousarray(rgb), (side, side), interpolation=cv2.INTER_AREA)


def fetch_with_kagglehub(name: str) -> Path:
    """The arrays' folder in kagglehub's cache, downloaded once; a clear error without kagglehub or credentials."""
    credentials = Path.home() / ".kaggle" / "kaggle.json"
    has_credentials = credentials.is_file() or (os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"))
    try:
        import kagglehub
    except ImportError:
        kagglehub = None
    if kagglehub is None or not has_credentials:
        raise ConfigError(
            f"{name}: no arrays. Either set 'path:' (or TAGCOLOR_<NAME>_PATH) to a folder holding {L_FILE} and "
            f"{AB_DIR}/ab1.npy … as published, or install the extra (pip install 'tagcolor[kaggle]') and give "
            f"Kaggle credentials (~/.kaggle/kaggle.json, or KAGGLE_USERNAME and KAGGLE_KEY) to fetch {KAGGLE_DATASET}"
        )
    return Path(kagglehub.dataset_download(KAGGLE_DATASET))
