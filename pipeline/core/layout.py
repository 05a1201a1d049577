"""A dataset on disk: where each file lives, how the global image order maps onto shards, and the checks of
that contract (docs/ARCHITECTURE.md, "Data contract").

Everything of a dataset lives below ``$TAGCOLOR_DATA_DIR/<dataset>``. Image ``i`` of the global order is row
``i mod shard_size`` of shard ``i // shard_size``, row ``i`` of ``tokens.npy`` and of ``images.parquet``.
The pipeline writes this layout and the model reads it; both take it from here.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.config import ConfigError
from pipeline.core.contract import SHARD_NAME, TOKENS_PER_IMAGE
from pipeline.core.files import atomic_write_text


class DataError(ValueError):
    """The dataset on disk does not hold what a reader needs; the message says which step to run."""


def _below_root(name: str, doc: str) -> property:
    """The read-only attribute ``root / name`` of a :class:`DatasetPaths`."""
    return property(lambda self: self.root / name, doc=doc)


@dataclass(frozen=True)
class DatasetPaths:
    """Every file of one dataset lives below ``root`` = ``$TAGCOLOR_DATA_DIR/<dataset>``."""

    root: Path

    raw = _below_root("raw", "The archives exactly as published (or drawn, for the synthetic kind).")
    shards = _below_root("shards", "``lab_NNN.npy``: the Lab shards.")
    images_table = _below_root("images.parquet", "A Parquet dataset directory, one file per shard (``NNN.parquet``).")
    tokens = _below_root("tokens.npy", "int32 ``(N, 20)`` token rows, row ``i`` ↔ image ``i``.")
    tags_table = _below_root("tags.parquet", "Each image's tags and their counts.")
    stats = _below_root("stats", "``data_stats``: tables, report and plots.")
    runs = _below_root("runs", "One directory per training run, ``runs/<run_name>/``.")
    evaluation = _below_root("evaluation", "Metrics and collages of the last evaluation.")
    tag_words = _below_root("tag_words.npy", "int32 ``(N, 8)`` word ids, row ``i`` ↔ image ``i``, 0 = pad.")
    words = _below_root("words.json", "The word vocabulary: a JSON list, the word of id ``k`` at index ``k``.")
    split = _below_root("split.json", "The sharding and held-out shard a growing dataset fixed when first obtained.")

    def archive(self, archive: str) -> Path:
        """A published zip archive, kept under ``raw/`` exactly as published."""
        return self.raw / f"{archive}.zip"

    def shard(self, shard: int) -> Path:
        return self.shards / SHARD_NAME.format(shard=shard)

    def shard_rows(self, shard: int) -> Path:
        return self.images_table / f"{shard:03d}.parquet"

    def latest_run(self) -> Path | None:
        """The run directory whose ``latest.pt`` was written last, if any run has one."""
        checkpoints = sorted(self.runs.glob("*/latest.pt"), key=lambda path: path.stat().st_mtime_ns)
        return checkpoints[-1].parent if checkpoints else None

    def inside(self, path: Path) -> Path:
        """Resolve ``path`` and refuse it unless it lies below the dataset root."""
        resolved = path.resolve()
        if not resolved.is_relative_to(self.root.resolve()):
            raise ConfigError(f"{path} lies outside the data root {self.root}")
        return resolved


@dataclass(frozen=True, kw_only=True)
class Sharding:
    """How ``n_images`` images in global order are cut into shards of ``shard_size`` (the last may be short)."""

    n_images: int
    shard_size: int

    @property
    def n_shards(self) -> int:
        return -(-self.n_images // self.shard_size) if self.n_images else 0  # a folder not yet scanned: none

    def shard_keys(self) -> list[str]:
        """Partition keys of ``lab_shards``: ``000``, ``001``, …"""
        return [f"{shard:03d}" for shard in range(self.n_shards)]

    def shard_ids(self, shard: int) -> range:
        """Image ids (global order, rows of ``tokens.npy``) held by ``shard``."""
        if not 0 <= shard < self.n_shards:
            raise ConfigError(f"shard {shard} does not exist (0 … {self.n_shards - 1})")
        start = shard * self.shard_size
        return range(start, min(start + self.shard_size, self.n_images))


@dataclass(frozen=True, kw_only=True)
class DatasetLayout(Sharding):
    """A dataset found on disk: its files and its sharding, as a reader that has no config sees them.

    ``holdout_shard`` is the shard the dataset keeps for evaluation where it recorded one (``split.json``);
    None: the last shard, by convention.
    """

    paths: DatasetPaths
    holdout_shard: int | None = None


@dataclass(frozen=True)
class Split:
    """What a dataset that grows fixed when it was first obtained: its shard size and its held-out shard.

    Photos added later take new ids, so they never move a held-out photo into training or back.
    """

    shard_size: int
    holdout_shard: int

    def write(self, paths: DatasetPaths) -> None:
        atomic_write_text(paths.split, json.dumps(dataclasses.asdict(self)) + "\n")

    @classmethod
    def read(cls, paths: DatasetPaths) -> Split | None:
        """The recorded split, None when the dataset records none; a damaged record is an error."""
        if not paths.split.is_file():
            return None
        try:
            return cls(**json.loads(paths.split.read_text()))
        except (OSError, ValueError, TypeError) as error:
            raise DataError(f"{paths.split}: not a split record ({error}); restore it from a backup") from error


def _rows(path: Path) -> int:
    """Row count of a ``.npy`` file, read from its header only."""
    return int(np.load(path, mmap_mode="r").shape[0])


def read_layout(root: Path, shards: Sequence[int] | None = None) -> DatasetLayout:
    """Inspect ``root``: the image count from ``tokens.npy``, the shard size from the rows of shard 0.

    A run over a later subset may not have shard 0 on disk; then the largest listed shard tells the size
    (only the dataset's last shard can be short).
    """
    paths = DatasetPaths(root)
    if not paths.tokens.is_file():
        raise DataError(f"{paths.tokens} does not exist; materialize tag_tokens first")
    if not paths.images_table.exists():
        raise DataError(f"{paths.images_table} does not exist; materialize lab_shards first")
    header = np.load(paths.tokens, mmap_mode="r")
    if header.ndim != 2 or header.shape[1] != TOKENS_PER_IMAGE or header.dtype != np.int32:
        raise DataError(f"{paths.tokens}: expected int32 (N, {TOKENS_PER_IMAGE}), got {header.dtype} {header.shape}")
    first = paths.shard(0)
    candidates = [first] if first.is_file() else [paths.shard(s) for s in shards or ()]
    sizes = [_rows(path) for path in candidates if path.is_file()]
    if not sizes or max(sizes) == 0:
        raise DataError(f"cannot tell the shard size: {first} does not exist and no listed shard does")
    split = Split.read(paths)
    return DatasetLayout(
        n_images=int(header.shape[0]),
        shard_size=max(sizes),
        paths=paths,
        holdout_shard=split.holdout_shard if split else None,
    )


def read_images_table(paths: DatasetPaths, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Every shard's rows of ``images.parquet`` (``columns`` only, if given), sorted by ``image_id``."""
    columns = None if columns is None else list(dict.fromkeys(["image_id", *columns]))
    return pd.read_parquet(paths.images_table, columns=columns).sort_values("image_id", ignore_index=True)


def shard_problems(paths: DatasetPaths, shard: int, ids: range, image_size: int) -> list[str]:
    """Contract violations of one shard: file shape and dtype, and its images.parquet rows are ``ids`` in order."""
    path = paths.shard(shard)
    if not path.is_file():
        return [f"{path.name}: missing"]
    array = np.load(path, mmap_mode="r")
    expected = (len(ids), image_size, image_size, 3)
    problems = []
    if array.dtype != np.uint8:
        problems.append(f"{path.name}: dtype {array.dtype}, expected uint8")
    if array.shape != expected:
        problems.append(f"{path.name}: shape {array.shape}, expected {expected}")
    rows = pd.read_parquet(paths.shard_rows(shard), columns=["image_id", "row"])
    if not (np.array_equal(rows["image_id"], np.asarray(ids)) and np.array_equal(rows["row"], np.arange(len(ids)))):
        problems.append(f"{paths.shard_rows(shard).name}: rows are not image ids {ids[0]}…{ids[-1]} in order")
    return problems


def alignment_problems(paths: DatasetPaths, n_images: int) -> str:
    """'' when ``images.parquet`` and ``tokens.npy`` hold images ``0 … n_images − 1`` once each, in order."""
    expected = np.arange(n_images)
    ids = read_images_table(paths, ["image_id"])["image_id"].to_numpy() if paths.images_table.is_dir() else np.empty(0)
    n_tokens = np.load(paths.tokens, mmap_mode="r").shape[0] if paths.tokens.is_file() else 0
    problems = []
    if not np.array_equal(ids, expected):
        problems.append(f"images.parquet holds {len(ids):,} rows, not image ids 0 … {n_images - 1:,} once each")
    if n_tokens != n_images:
        problems.append(f"tokens.npy holds {n_tokens:,} rows, expected {n_images:,}")
    return "; ".join(problems)
