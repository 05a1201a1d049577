"""The photos an evaluation or a snapshot looks at, with their tags: a dataset's held-out shard as stored, or
original photo files under a protocol (e.g. DDColor's first 5,000 by file name, center-cropped to 256²).

A selection depends only on the seed, so runs compare; the tag ids are the dataset's raw ones, mapped into a
checkpoint's own index where it is used (:func:`model.data.checkpoint_ids`).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import pandas as pd
from PIL import Image

from model.data import token_rows
from pipeline.core.color import rgb_to_lab_u8
from pipeline.core.config import ConfigError
from pipeline.core.layout import DataError, DatasetPaths, open_shard, read_images_table, read_layout, read_table
from pipeline.core.photos import center_square, srgb_pixels

IMAGE_COLUMNS = ["image_id", "shard", "row", "valid", "is_grayscale"]

CROPS = ("center", "resize")
"""``center``: the largest centred square, then resized (DDColor's protocol); ``resize``: the whole photo
squeezed to the square."""

LabReader = Callable[[np.ndarray], np.ndarray]
"""Positions in an evaluation set → uint8 Lab ``(B, S, S, 3)``."""


@dataclass(frozen=True)
class Protocol:
    """How original photos become the evaluated squares: ``first_n`` by sorted file name (None: all),
    ``crop`` (:data:`CROPS`), then ``size``² pixels."""

    crop: str = "center"
    size: int = 256
    first_n: int | None = None

    def __post_init__(self) -> None:
        if self.crop not in CROPS:
            raise ConfigError(f"crop: must be one of {CROPS}, got {self.crop!r}")
        if self.size < 16:
            raise ConfigError(f"size: must be at least 16 pixels, got {self.size}")
        if self.first_n is not None and self.first_n <= 0:
            raise ConfigError(f"first_n: must be positive or null, got {self.first_n}")


@dataclass(frozen=True)
class PhotoFiles:
    """A dataset's original photo files: ``names`` (columns ``image_id`` and ``name``, the file's relative path)
    and ``read(image_id)``, the file's bytes; what a folder dataset's kind gives for ``split: all``."""

    names: pd.DataFrame
    read: Callable[[int], bytes]


@dataclass(frozen=True)
class EvaluationSet:
    """The photos one evaluation scores: image ids, their tag ids (the dataset's raw ids), captions, and a
    reader of their Lab. ``paths`` is the dataset the ids belong to; ``description`` says which photos."""

    paths: DatasetPaths
    description: str
    image_ids: np.ndarray
    raw_tokens: np.ndarray
    captions: dict[int, str]
    read: LabReader
    protocol: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.image_ids)

    @classmethod
    def of(
        cls,
        paths: DatasetPaths,
        ids: np.ndarray,
        tokenizer: str,
        description: str,
        read: LabReader,
        protocol: dict[str, Any],
    ) -> EvaluationSet:
        """The set of photos ``ids`` of ``paths``, with their tag ids (in ``tokenizer``'s files) and captions."""
        return cls(paths, description, ids, _raw_tokens(paths, ids, tokenizer), _captions(paths, ids), read, protocol)


def colour_photos(images: pd.DataFrame, shards: Sequence[int]) -> pd.DataFrame:
    """Rows of ``images.parquet`` that are valid colour photos of ``shards``, in ascending id order.

    Grayscale photos are left out as in training: there is no colour to recover from them.
    """
    keep = images["shard"].isin(list(shards)) & images["valid"] & ~images["is_grayscale"]
    return images[keep].sort_values("image_id", ignore_index=True)


def seeded_subset(rows: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """``n`` rows drawn with ``seed`` (all when None or fewer exist), kept in their original order."""
    if n is not None and n <= 0:
        raise ConfigError(f"n_images: must be positive or null, got {n}")
    if n is None or n >= len(rows):
        return rows
    chosen = np.sort(np.random.default_rng(seed).choice(len(rows), size=n, replace=False))
    return rows.iloc[chosen].reset_index(drop=True)


def read_rows(paths: DatasetPaths, rows: pd.DataFrame) -> np.ndarray:
    """The Lab photos of ``rows`` (any shards), each shard memory-mapped and read in row order."""
    shards = rows["shard"].to_numpy()
    out: np.ndarray | None = None
    for shard in np.unique(shards):
        array = open_shard(paths, int(shard))
        if out is None:
            out = np.empty((len(rows), *array.shape[1:]), dtype=array.dtype)
        where = np.flatnonzero(shards == shard)
        out[where] = array[rows["row"].to_numpy()[where]]
    if out is None:
        raise ValueError("no rows to read")
    return out


def _captions(paths: DatasetPaths, ids: np.ndarray) -> dict[int, str]:
    """Each photo's tags joined by commas (nothing where the dataset has no tag table)."""
    if not paths.tags_table.is_file():
        return {}
    remedy = paths.remedy("tag_tokens")
    tags = read_table(paths.tags_table, remedy, ["image_id", "tags"], filters=[("image_id", "in", ids.tolist())])
    return {int(i): ", ".join(t) for i, t in zip(tags["image_id"], tags["tags"], strict=True)}


def _raw_tokens(paths: DatasetPaths, ids: np.ndarray, tokenizer: str) -> np.ndarray:
    return np.asarray(token_rows(paths, tokenizer)[ids], dtype=np.int32)


def holdout_set(
    paths: DatasetPaths, holdout_shard: int, tokenizer: str, n_images: int | None = 256, seed: int = 0
) -> EvaluationSet:
    """Up to ``n_images`` colour photos of ``holdout_shard`` (seeded), read from the 224² shards."""
    layout = read_layout(paths.root, [holdout_shard])
    if not 0 <= holdout_shard < layout.n_shards:
        raise DataError(f"held-out shard {holdout_shard} is not a shard of {paths.root} (0 … {layout.n_shards - 1})")
    images = read_images_table(paths, IMAGE_COLUMNS, [holdout_shard])
    selection = seeded_subset(colour_photos(images, [holdout_shard]), n_images, seed)
    if selection.empty:
        raise DataError(f"held-out shard {holdout_shard} of {paths.root} has no valid colour photos to evaluate on")
    description = f"held-out shard {holdout_shard:03d} of {paths.root.name}"
    protocol = {"split": "holdout", "holdout_shard": holdout_shard, "n_images": n_images, "seed": seed}
    return rows_set(paths, selection, tokenizer, description, protocol)


def validation_set(paths: DatasetPaths, val_ids: Sequence[int], tokenizer: str) -> EvaluationSet:
    """A run's validation photos (its ``val_ids``, set aside from training), read from the shards as stored:
    what recipes are compared on, the test shard choosing nothing."""
    images = read_images_table(paths, IMAGE_COLUMNS)
    rows = images[images["image_id"].isin(list(val_ids))].sort_values("image_id", ignore_index=True)
    if rows.empty:
        raise DataError(f"{paths.root} holds none of the run's {len(val_ids)} validation photos")
    protocol = {"split": "validation", "n_images": len(rows)}
    return rows_set(paths, rows, tokenizer, f"{len(rows)} validation photos of {paths.root.name}", protocol)


def rows_set(
    paths: DatasetPaths, rows: pd.DataFrame, tokenizer: str, description: str, protocol: dict[str, Any]
) -> EvaluationSet:
    """The photos of ``rows`` (of ``images.parquet``), read from the shards as stored."""

    def read(positions: np.ndarray) -> np.ndarray:
        return read_rows(paths, rows.iloc[positions])

    return EvaluationSet.of(paths, rows["image_id"].to_numpy(), tokenizer, description, read, protocol)


def square_lab(data: bytes, protocol: Protocol) -> np.ndarray:
    """A photo file's bytes → uint8 Lab ``(size, size, 3)``: upright, in sRGB, cropped and resized per protocol."""
    with Image.open(io.BytesIO(data)) as image:
        pixels = srgb_pixels(image)
    if protocol.crop == "center":
        pixels = center_square(pixels)
    shrink = min(pixels.shape[:2]) > protocol.size
    resized = cv2.resize(
        pixels, (protocol.size, protocol.size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
    )
    return rgb_to_lab_u8(resized)


def photo_set(
    paths: DatasetPaths,
    names: pd.DataFrame,
    read_photo: Callable[[int], bytes],
    tokenizer: str,
    protocol: Protocol,
) -> EvaluationSet:
    """The photos of ``names`` (columns ``image_id``, ``name``: the file's relative path) under ``protocol``,
    decoded from their original files by ``read_photo(image_id)``.

    Photos are ordered by file name (then path), so ImageNet's ``ILSVRC2012_val_00000001.JPEG`` … come first
    even when stored in class folders; ``first_n`` keeps the first of them.
    """
    if names.empty:
        raise DataError(f"{paths.root.name} has no photos to evaluate on")
    basename = names["name"].map(lambda name: str(name).rsplit("/", 1)[-1])
    ordered = names.assign(_base=basename).sort_values(["_base", "name"], kind="stable", ignore_index=True)
    ordered = ordered.head(protocol.first_n) if protocol.first_n is not None else ordered
    ids = ordered["image_id"].to_numpy()
    files = ordered["name"].astype(str).tolist()

    def read_one(position: int) -> np.ndarray:
        try:
            return square_lab(read_photo(int(ids[position])), protocol)
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise DataError(f"{files[position]}: cannot be scored ({error}); scan the folder again") from error

    def read(positions: np.ndarray) -> np.ndarray:
        return np.stack([read_one(int(p)) for p in np.atleast_1d(positions)])

    return EvaluationSet.of(
        paths,
        ids,
        tokenizer,
        f"{len(ids)} photos of {paths.root.name} ({protocol.crop} {protocol.size}²)",
        read,
        {"split": "all", "crop": protocol.crop, "size": protocol.size, "first_n": protocol.first_n},
    )
