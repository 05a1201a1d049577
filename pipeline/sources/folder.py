"""Kind ``folder``: a directory of your own photos, tagged by sidecar files or by one ``tags.csv``.

Photos are found recursively (``.jpg .jpeg .png .webp .tif .tiff``, 8- or 16-bit, and ``.heic .heif`` where
``pillow-heif`` is installed; any case), in sorted relative-path order. Tags come from ``tags.csv`` at the
folder's root when it has one (columns ``path,tags``, tags separated by commas), else from a sidecar
``<photo stem>.txt`` beside each photo (one tag per line, as MIRFLICKR's tag files). A photo without tags is a
photo without tags.

The ``archives`` asset writes ``raw/manifest.parquet`` (image id, relative path, size, mtime, SHA-1 of the
bytes): it fixes the global order. A re-scan appends new photos with new ids; existing ids never move, a
changed or vanished photo keeps its id and gets a status that makes its row invalid at the next conversion.
Unchanged files (same size and mtime) are not read again. The first scan also fixes the sharding and the
held-out shard (``split.json``), so appended photos never move a held-out photo into training or back.

The folder is only read: nothing outside ``path`` is opened (a symbolic link that leaves it is never
followed) and nothing is written there.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import os
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.config import ConfigError
from pipeline.core.contract import CHANGED, DUPLICATE, MISSING, TOO_LARGE
from pipeline.core.files import atomic_path, file_digest
from pipeline.core.layout import PARQUET_ERRORS, DatasetPaths, Split, read_table
from pipeline.datasets import resolve_repo_path
from pipeline.sources import base
from pipeline.sources.base import DatasetSpec, PhotoUnavailable, Progress, SourceResult, TagFileUnreadable

ARCHIVE = "folder"
"""The one partition of ``archives``: the scan of the whole folder."""

PHOTO_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".heic", ".heif"})
"""TIFF is what scanners write, often with 16 bits a channel (scaled to 8 when read)."""
TAG_SUFFIX = ".txt"
TAGS_CSV = "tags.csv"

OK = "ok"
"""A manifest row's status at the last scan: ``ok`` (as first seen), else ``changed`` or ``missing``."""

MAX_SHARD_SIZE = 10_000
AUTO_SHARDS = 5
"""With ``shard_size: 0`` (the default) the first scan cuts the folder into about five shards of at most
10,000 photos: a 30-photo folder then has four training shards and a held-out one."""

MAX_TAG_BYTES = 1 << 20
"""A tag file larger than this is not a tag file (counted as unreadable)."""

MANIFEST_SCHEMA = pa.schema(
    [
        ("image_id", pa.int64()),
        ("path", pa.string()),
        ("size", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("sha1", pa.string()),
        ("status", pa.string()),
    ]
)


def inside(path: Path, real_root: Path) -> bool:
    """Whether ``path``, with every link followed, lies below ``real_root`` (a folder already resolved: the
    readers check every photo and sidecar, and resolve their folder once)."""
    return path.resolve().is_relative_to(real_root)


def file_sha1(path: Path) -> str:
    return file_digest(path, "sha1")


@dataclass(frozen=True)
class Found:
    """What a walk of the folder found: photos by relative path, and what it passed over."""

    photos: list[str]
    skipped_files: int
    outside_links: int


def scan(root: Path) -> Found:
    """Every photo below ``root`` in sorted relative-path order; linked directories are not entered and a
    linked file that leaves ``root`` is passed over (counted)."""
    photos: list[str] = []
    skipped = outside = 0
    real_root = root.resolve()
    for folder, _, names in os.walk(root):  # followlinks=False: a linked directory is listed, never entered
        for name in names:
            path = Path(folder) / name
            relative = path.relative_to(root).as_posix()
            if path.suffix.lower() not in PHOTO_SUFFIXES:
                skipped += path.suffix.lower() != TAG_SUFFIX and relative != TAGS_CSV
            elif path.is_symlink() and not inside(path, real_root):
                outside += 1
            else:
                photos.append(relative)
    return Found(sorted(photos), int(skipped), outside)


def read_manifest(paths: DatasetPaths) -> pd.DataFrame:
    """The manifest, ordered by image id; an error naming the asset that writes it when there is none."""
    path = paths.manifest
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: materialize {paths.root.name}/archives first")
    # The manifest fixes every photo's id: a new scan would number the photos anew, so a backup comes first.
    remedy = f"restore it from a backup, or delete it and {paths.remedy('archives', ARCHIVE)} and every asset after"
    return read_table(path, remedy).sort_values("image_id", ignore_index=True)


def update_manifest(root: Path, old: pd.DataFrame | None) -> tuple[pd.DataFrame, dict[str, int]]:
    """The manifest after a scan of ``root``: old rows keep their ids (with a fresh status), new photos are
    appended in path order. Only files whose size or mtime differ from the manifest's are read (hashed)."""
    found = scan(root)
    rows = [] if old is None else old.to_dict("records")
    by_path = {row["path"]: row for row in rows}
    counts = dict.fromkeys(("new", "unchanged", "changed", "missing", "unreadable", "hashed"), 0)
    present = set(found.photos)
    for row in rows:
        if row["path"] not in present:
            row["status"] = MISSING
            counts["missing"] += 1
    for relative in found.photos:
        row = by_path.get(relative)
        try:
            stat = (root / relative).stat()
            if row is not None and (row["size"], row["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns):
                row["status"] = OK
                counts["unchanged"] += 1
                continue
            digest = file_sha1(root / relative)
        except OSError:  # gone since the walk, or unreadable: a new photo waits for the next scan for its id
            counts["unreadable"] += 1
            if row is not None:
                row["status"] = MISSING
            continue
        counts["hashed"] += 1
        if row is None:
            rows.append({"image_id": len(rows), "path": relative, "size": stat.st_size,
                         "mtime_ns": stat.st_mtime_ns, "sha1": digest, "status": OK})  # fmt: skip
            counts["new"] += 1
        elif digest == row["sha1"]:  # touched, not changed: remember the new stat so it is not read again
            row.update(size=stat.st_size, mtime_ns=stat.st_mtime_ns, status=OK)
            counts["unchanged"] += 1
        else:
            row["status"] = CHANGED
            counts["changed"] += 1
    manifest = pd.DataFrame(rows, columns=MANIFEST_SCHEMA.names)
    counts |= {"skipped_files": found.skipped_files, "outside_links": found.outside_links}
    return manifest, counts


def first_split(n_images: int, shard_size: int) -> Split:
    """The sharding a folder's first scan fixes: the configured shard size (0: about a fifth of the photos, at
    most 10,000) and its last shard held out."""
    size = shard_size or min(MAX_SHARD_SIZE, max(1, -(-n_images // AUTO_SHARDS)))
    return Split(shard_size=size, holdout_shard=-(-n_images // size) - 1)


def duplicated_in_training(manifest: pd.DataFrame, split: Split) -> set[int]:
    """Held-out photos whose bytes equal a training photo's: they never count as held out."""
    held = manifest["image_id"] // split.shard_size == split.holdout_shard
    training = set(manifest.loc[~held, "sha1"])
    return set(manifest.loc[held & manifest["sha1"].isin(training), "image_id"].tolist())


@dataclass(frozen=True, kw_only=True)
class Spec(DatasetSpec):
    """A folder of photos at ``path`` (absolute or relative to the repository; ``TAGCOLOR_<NAME>_PATH``
    overrides it). ``n_images`` is what the manifest holds; ``shard_size`` 0 is chosen at the first scan."""

    path: str = ""
    n_images: int = 0
    shard_size: int = 0
    train_config: str = "folder"

    kind = "folder"
    tags_in_image_archives = True
    tags_archive = ARCHIVE
    derived = ("n_images",)

    @property
    def root(self) -> Path:
        return resolve_repo_path(self.path)

    def check(self, source: str) -> None:
        if not self.path:
            raise ConfigError(f"{source}: 'path' is required for a folder of photos")
        if self.shard_size < 0 or self.image_size <= 0:
            raise ConfigError(f"{source}: 'shard_size' must be 0 (automatic) or positive, 'image_size' positive")

    def on_disk(self, paths: DatasetPaths) -> Spec:
        """The size the manifest records and the shard size the first scan fixed (none yet: no shards)."""
        split = Split.read(paths)
        manifest = paths.manifest
        try:
            n_images = pq.read_metadata(manifest).num_rows if manifest.is_file() else 0
        except PARQUET_ERRORS:  # damaged: the definitions still load, and reading it says what to do
            n_images = 0
        return dataclasses.replace(self, n_images=n_images, shard_size=split.shard_size if split else self.shard_size)

    def archives(self) -> list[str]:
        return [ARCHIVE]

    def archive_of(self, image_id: int) -> str:
        return ARCHIVE

    def obtain(self, archive: str, paths: DatasetPaths, base_url: str | None, progress: Progress) -> SourceResult:
        """Scan the folder into the manifest (and, the first time, fix the split)."""
        started = time.perf_counter()
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.name}: the folder {self.root} does not exist")
        old = read_manifest(paths) if (paths.manifest).is_file() else None
        manifest, counts = update_manifest(self.root, old)
        if manifest.empty:
            raise FileNotFoundError(f"{self.name}: no photos ({', '.join(sorted(PHOTO_SUFFIXES))}) in {self.root}")
        split = Split.read(paths)
        if split is None:  # written before the manifest, so a manifest never exists without its split
            split = first_split(len(manifest), self.shard_size)
            split.write(paths)
        with atomic_path(paths.manifest, suffix=".parquet") as tmp:
            pq.write_table(pa.Table.from_pandas(manifest, schema=MANIFEST_SCHEMA, preserve_index=False), tmp)
        sha1 = manifest["sha1"]
        return SourceResult(
            path=paths.manifest,
            figures={
                "folder": str(self.root),
                "photos": len(manifest),
                **counts,
                "duplicates": int(sha1.duplicated().sum()),
                "duplicates_held_out": len(duplicated_in_training(manifest, split)),
                "shard_size": split.shard_size,
                "holdout_shard": split.holdout_shard,
                "duration_s": time.perf_counter() - started,
            },
        )

    def obtain_tags(self, paths: DatasetPaths, base_url: str | None, progress: Progress) -> SourceResult:
        """Count the photos that have tags, and what ``tags.csv`` names that is no photo of the folder."""
        started = time.perf_counter()
        with self.open_tags(paths) as tags:
            tagged = sum(tags.read(image_id) is not None for image_id in range(len(tags.paths)))
            figures = {"tagged_photos": tagged, "photos": len(tags.paths), **tags.csv_counts}
        figures["duration_s"] = time.perf_counter() - started
        return SourceResult(path=self.root / (TAGS_CSV if tags.from_csv else ""), figures=figures)

    def photo_names(self, paths: DatasetPaths) -> pd.DataFrame:
        manifest = read_manifest(paths)
        kept = manifest[manifest["status"] == OK]
        return pd.DataFrame({"image_id": kept["image_id"].to_numpy(), "name": kept["path"].to_numpy()})

    def open_photos(self, paths: DatasetPaths) -> FolderPhotos:
        return FolderPhotos(self.root, read_manifest(paths), Split.read(paths))

    def open_tags(self, paths: DatasetPaths) -> FolderTags:
        return FolderTags(self.root, read_manifest(paths)["path"].tolist())


class FolderPhotos:
    """Photos read by id through the manifest; a file that changed since is refused, not read as another.

    The manifest's columns are taken out as lists once: a pandas row per photo costs more than reading it.
    """

    def __init__(self, root: Path, manifest: pd.DataFrame, split: Split | None) -> None:
        self._root = root
        self._real_root = root.resolve()
        self._files = manifest["path"].tolist()
        self._status = manifest["status"].tolist()
        self._sha1 = manifest["sha1"].tolist()
        self._duplicates = duplicated_in_training(manifest, split) if split else set()

    def read(self, image_id: int) -> bytes:
        if not 0 <= image_id < len(self._files):
            raise PhotoUnavailable(MISSING)
        if self._status[image_id] != OK:
            raise PhotoUnavailable(self._status[image_id])
        if image_id in self._duplicates:
            raise PhotoUnavailable(DUPLICATE)
        path = self._root / self._files[image_id]
        try:
            if not inside(path, self._real_root):
                raise PhotoUnavailable(MISSING)
            with path.open("rb") as file:
                if os.fstat(file.fileno()).st_size > base.MAX_PHOTO_BYTES:
                    raise PhotoUnavailable(TOO_LARGE)
                data = file.read()
        except OSError as error:
            raise PhotoUnavailable(MISSING) from error
        if hashlib.sha1(data).hexdigest() != self._sha1[image_id]:
            raise PhotoUnavailable(CHANGED)
        return data

    def unsafe_entries(self, ids: range) -> int:
        return 0  # links that leave the folder are passed over (and counted) by the scan

    def __enter__(self) -> FolderPhotos:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class FolderTags:
    """Tags by image id: from ``tags.csv`` when the folder has one, else from each photo's sidecar file."""

    def __init__(self, root: Path, paths: list[str]) -> None:
        self.paths = paths
        self._root = root
        self._real_root = root.resolve()
        csv_path = root / TAGS_CSV
        self.from_csv = csv_path.is_file() and inside(csv_path, self._real_root)
        self.csv_counts: dict[str, int] = {}
        self._csv: dict[str, list[str]] = {}
        if self.from_csv:
            self._csv, self.csv_counts = read_tags_csv(csv_path, set(paths))

    def read(self, image_id: int) -> bytes | None:
        relative = self.paths[image_id]
        if self.from_csv:
            tags = self._csv.get(relative)
            return None if tags is None else "\n".join(tags).encode()
        sidecar = self._root / PurePosixPath(relative).with_suffix(TAG_SUFFIX)
        try:
            if not sidecar.is_file() or not inside(sidecar, self._real_root):
                return None
            if sidecar.stat().st_size > MAX_TAG_BYTES:
                raise TagFileUnreadable(f"{sidecar}: over {MAX_TAG_BYTES} bytes")
            return sidecar.read_bytes()
        except OSError as error:
            raise TagFileUnreadable(str(error)) from error

    def unsafe_entries(self) -> int:
        return self.csv_counts.get("csv_rows_outside", 0)

    def __enter__(self) -> FolderTags:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def read_tags_csv(path: Path, photos: set[str]) -> tuple[dict[str, list[str]], dict[str, int]]:
    """``tags.csv`` (columns ``path,tags``) by photo path; rows naming a path outside the folder or no photo of
    it are counted and ignored. Text that is not UTF-8 is read as Latin-1, which keeps every byte."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or not {"path", "tags"} <= set(reader.fieldnames):
        raise ConfigError(f"{path}: expected the columns 'path' and 'tags', got {reader.fieldnames}")
    tags: dict[str, list[str]] = {}
    counts = dict.fromkeys(("csv_rows", "csv_rows_outside", "csv_rows_unknown"), 0)
    for row in reader:
        counts["csv_rows"] += 1
        name = (row.get("path") or "").strip().replace("\\", "/")
        parts = PurePosixPath(name).parts
        if not name or PurePosixPath(name).is_absolute() or ".." in parts:
            counts["csv_rows_outside"] += 1
        elif PurePosixPath(name).as_posix() not in photos:
            counts["csv_rows_unknown"] += 1
        else:
            tags[PurePosixPath(name).as_posix()] = [t for tag in (row["tags"] or "").split(",") if (t := tag.strip())]
    return tags, counts
