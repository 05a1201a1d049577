"""Evaluate a checkpoint on the held-out shard: metrics under three tag conditions, two baselines, collages.

The conditions separate what the tags contribute from what the photo's lightness alone gives away:

- ``tags``: each photo with its own tags, as in use;
- ``pad``: every token ``<|pad|>``, the model without any tag;
- ``shuffled``: each photo with another photo's tags (a seeded derangement), so tags are present and
  plausible but wrong. ``tag_gain = ab_error(shuffled) / ab_error(tags)`` above 1 means the model reads
  its tags rather than ignoring them.

The baselines are what any colorizer must beat: ``grey`` (a = b = 0) and ``train_mean`` (the mean a, b of
the training photos, everywhere). Each headline ``*_gain`` divides the ab error of a condition or baseline
by the ab error with the true tags: above 1, the model with its tags does better. The selection of photos
depends only on the seed, so runs compare.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from model.data import checkpoint_ids, tokens_file
from model.inference import Colorizer
from model.metrics import ImageMetrics, image_metrics
from pipeline.core.color import NEUTRAL_AB, lab_u8_to_rgb
from pipeline.core.files import atomic_write_text
from pipeline.core.layout import DatasetPaths
from pipeline.core.render import CollageRow, Markdown, preview_markdown, render_collage

CONDITIONS = ("tags", "pad", "shuffled")
BASELINES = ("grey", "train_mean")
TRAIN_MEAN_SAMPLE = 2000
"""Training photos read for the mean a, b: enough for a stable mean, few enough to read in seconds."""
READ_CHUNK = 256
"""Photos read from the shards at once when averaging."""
METRICS_NAME = "metrics.json"
COLLAGE_NAME = "result_collage.png"
MIN_TILE = 128
"""Smaller photos are enlarged in collages so that column titles and captions stay legible."""
BEST_COLLAGE_NAME = "result_collage_best.png"
IMAGE_COLUMNS = ["image_id", "shard", "row", "valid", "is_grayscale"]


@dataclass(frozen=True)
class EvaluationResult:
    """``metrics`` as written to ``metrics.json``; ``figures`` flat (``ab_error/tags``, …) for asset metadata."""

    metrics: dict[str, Any]
    figures: dict[str, float | int]
    metrics_path: Path
    collage_path: Path
    best_collage_path: Path

    @property
    def metadata(self) -> dict[str, object]:
        preview = preview_markdown(self.collage_path, "result collage")
        where = (
            f"held-out shard {self.metrics['holdout_shard']:03d}, run {Path(self.metrics['checkpoint']).parent.name}"
        )
        return {
            "collage": self.collage_path,
            "best_collage": self.best_collage_path,
            "metrics_json": self.metrics_path,
            "preview": Markdown(f"{preview}\n\n{where}"),
            **self.figures,
        }


def colour_photos(images: pd.DataFrame, shards: Sequence[int]) -> pd.DataFrame:
    """Rows of ``images.parquet`` that are valid colour photos of ``shards``, in ascending id order.

    Grayscale photos are left out as in training: there is no colour to recover from them.
    """
    keep = images["shard"].isin(list(shards)) & images["valid"] & ~images["is_grayscale"]
    return images[keep].sort_values("image_id", ignore_index=True)


def seeded_subset(rows: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """``n`` rows drawn with ``seed`` (all when None or fewer exist), kept in their original order."""
    if n is not None and n <= 0:
        raise ValueError(f"n_images must be positive or None, got {n}")
    if n is None or n >= len(rows):
        return rows
    chosen = np.sort(np.random.default_rng(seed).choice(len(rows), size=n, replace=False))
    return rows.iloc[chosen].reset_index(drop=True)


def derangement(n: int, seed: int) -> np.ndarray:
    """A seeded permutation without fixed points: a random cyclic order, each image takes the next one's."""
    if n < 2:
        raise ValueError(f"shuffling tags across images needs at least 2 images, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    permutation = np.empty(n, dtype=np.int64)
    permutation[order] = np.roll(order, -1)
    return permutation


def with_ab(lab: np.ndarray, ab: np.ndarray | int) -> np.ndarray:
    """A copy of uint8 Lab ``lab`` with its a, b replaced by ``ab`` (broadcast)."""
    out = lab.copy()
    out[..., 1:] = ab
    return out


def read_rows(paths: DatasetPaths, rows: pd.DataFrame) -> np.ndarray:
    """The Lab photos of ``rows`` (any shards), each shard memory-mapped and read in row order."""
    shards = rows["shard"].to_numpy()
    out: np.ndarray | None = None
    for shard in np.unique(shards):
        array = np.load(paths.shard(int(shard)), mmap_mode="r")
        if out is None:
            out = np.empty((len(rows), *array.shape[1:]), dtype=array.dtype)
        where = np.flatnonzero(shards == shard)
        out[where] = array[rows["row"].to_numpy()[where]]
    if out is None:
        raise ValueError("no rows to read")
    return out


def train_mean_ab(
    paths: DatasetPaths, images: pd.DataFrame, shards: Sequence[int], seed: int, limit: int = TRAIN_MEAN_SAMPLE
) -> tuple[np.ndarray, int]:
    """Mean encoded a, b over the colour photos of the training ``shards`` (at most ``limit`` of them, seeded).

    Returns the two means and the number of photos they were taken from.
    """
    rows = seeded_subset(colour_photos(images, shards), limit, seed)
    if rows.empty:
        raise ValueError(f"no valid colour photos in training shards {list(shards)}")
    total = np.zeros(2, dtype=np.float64)
    pixels = 0
    for start in range(0, len(rows), READ_CHUNK):
        ab = read_rows(paths, rows.iloc[start : start + READ_CHUNK])[..., 1:].reshape(-1, 2)
        total += ab.sum(axis=0, dtype=np.float64)
        pixels += len(ab)
    return total / pixels, len(rows)


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else math.nan


def _finite_or_none(value: Any) -> Any:
    """JSON has no ``inf`` or ``nan``: they become ``null`` (``psnr_identical`` says why PSNR is missing)."""
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _collage(
    paths: DatasetPaths,
    rows: pd.DataFrame,
    tokens: np.ndarray,
    colorizer: Colorizer,
    captions: dict[int, str],
    path: Path,
) -> Path:
    """Grey input | generated with the true tags | original, for ``rows``."""
    lab = read_rows(paths, rows)
    generated = with_ab(lab, colorizer.predict_ab(lab[..., 0], tokens))
    grey = lab_u8_to_rgb(with_ab(lab, NEUTRAL_AB))
    collage_rows = [
        CollageRow(grey[i], lab_u8_to_rgb(generated[i]), lab_u8_to_rgb(lab[i]), captions.get(image_id, ""))
        for i, image_id in enumerate(rows["image_id"].tolist())
    ]
    return render_collage(collage_rows, path, tile=max(lab.shape[1], MIN_TILE))


def trained_split(run_dir: Path) -> tuple[int, list[int]]:
    """The held-out shard and the training shards of a run, as its ``config.yaml`` recorded them.

    Read, not re-validated: a run trained on a GPU is evaluated on a CPU-only machine just as well.
    """
    path = run_dir / "config.yaml"
    try:
        saved = yaml.safe_load(path.read_text())
        return int(saved["holdout_shard"]), [int(s) for s in saved["shards"]]
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: no readable holdout_shard and shards ({error})") from error


def evaluate_checkpoint(
    paths: DatasetPaths,
    checkpoint: Path,
    holdout_shard: int,
    *,
    n_images: int | None = 256,
    collage_rows: int = 8,
    seed: int = 0,
    batch_size: int = 32,
    device: str = "cpu",
    train_shards: Sequence[int] | None = None,
) -> EvaluationResult:
    """Score ``checkpoint`` on colour photos of ``holdout_shard``; write ``metrics.json`` and two collages.

    ``train_shards`` (default: every other shard on disk) only feed the ``train_mean`` baseline. The
    collages show the first ``collage_rows`` photos of the selection and the ``collage_rows`` with the
    lowest ab error under their own tags.
    """
    if collage_rows <= 0 or batch_size <= 0:
        raise ValueError(f"collage_rows and batch_size must be positive, got {collage_rows} and {batch_size}")
    images = pd.read_parquet(paths.images_table, columns=IMAGE_COLUMNS)
    if holdout_shard not in set(images["shard"].tolist()):
        raise ValueError(f"{paths.images_table} has no rows for held-out shard {holdout_shard}")
    selection = seeded_subset(colour_photos(images, [holdout_shard]), n_images, seed)
    if selection.empty:
        raise ValueError(f"held-out shard {holdout_shard} has no valid colour photos to evaluate on")
    if train_shards is None:
        train_shards = [s for s in sorted(set(images["shard"].tolist())) if s != holdout_shard]
        train_shards = [s for s in train_shards if paths.shard(s).is_file()]
    if holdout_shard in train_shards:
        raise ValueError(f"shard {holdout_shard} is held out for evaluation but listed among the training shards")
    mean_ab, mean_sample = train_mean_ab(paths, images, train_shards, seed)
    mean_ab_u8 = np.rint(mean_ab).astype(np.uint8)

    colorizer = Colorizer.from_checkpoint(checkpoint, device=device)
    ids = selection["image_id"].to_numpy()
    tokens = np.load(tokens_file(paths, colorizer.index.tokenizer), mmap_mode="r")  # the checkpoint's tokenizer
    true_tokens = checkpoint_ids(np.asarray(tokens[ids], dtype=np.int32), paths, colorizer.index)
    condition_tokens = {
        "tags": true_tokens,
        "pad": np.full_like(true_tokens, colorizer.index.pad),
        "shuffled": true_tokens[derangement(len(ids), seed)],
    }
    parts: dict[str, list[ImageMetrics]] = {name: [] for name in CONDITIONS + BASELINES}
    for start in range(0, len(ids), batch_size):
        batch = slice(start, start + batch_size)
        original = read_rows(paths, selection.iloc[batch])
        for name, tokens in condition_tokens.items():
            predicted = colorizer.predict_ab(original[..., 0], tokens[batch])
            parts[name].append(image_metrics(with_ab(original, predicted), original))
        parts["grey"].append(image_metrics(with_ab(original, NEUTRAL_AB), original))
        parts["train_mean"].append(image_metrics(with_ab(original, mean_ab_u8), original))
    per_image = {name: ImageMetrics.concat(items) for name, items in parts.items()}
    summaries = {name: metrics.summary() for name, metrics in per_image.items()}

    error = {name: float(summary["ab_error"]) for name, summary in summaries.items()}
    headline = {
        "tag_gain": _ratio(error["shuffled"], error["tags"]),
        "pad_gain": _ratio(error["pad"], error["tags"]),
        "train_mean_gain": _ratio(error["train_mean"], error["tags"]),
        "grey_gain": _ratio(error["grey"], error["tags"]),
    }
    metrics: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "holdout_shard": holdout_shard,
        "seed": seed,
        "n_images": len(ids),
        "headline": headline,
        "conditions": {name: summaries[name] for name in CONDITIONS},
        "baselines": {name: summaries[name] for name in BASELINES},
        "train_mean_ab": {
            "a": float(mean_ab[0]) - NEUTRAL_AB,
            "b": float(mean_ab[1]) - NEUTRAL_AB,
            "photos": mean_sample,
            "shards": [int(s) for s in train_shards],
        },
        "image_ids": ids.tolist(),
    }
    metrics_path = paths.evaluation / METRICS_NAME
    atomic_write_text(metrics_path, json.dumps(_finite_or_none(metrics), indent=2, allow_nan=False) + "\n")

    tags = pd.read_parquet(paths.tags_table, columns=["image_id", "tags"], filters=[("image_id", "in", ids.tolist())])
    captions = {int(i): ", ".join(t) for i, t in zip(tags["image_id"], tags["tags"], strict=True)}
    first = np.arange(min(collage_rows, len(ids)))
    best = np.argsort(per_image["tags"].ab_error, kind="stable")[: len(first)]
    collage_path = _collage(
        paths, selection.iloc[first], true_tokens[first], colorizer, captions, paths.evaluation / COLLAGE_NAME
    )
    best_collage_path = _collage(
        paths, selection.iloc[best], true_tokens[best], colorizer, captions, paths.evaluation / BEST_COLLAGE_NAME
    )

    figures: dict[str, float | int] = {"n_images": len(ids), **headline}
    for name, summary in summaries.items():
        figures |= {f"{key}/{name}": value for key, value in summary.items() if key != "n_images"}
    return EvaluationResult(
        metrics=metrics,
        figures=figures,
        metrics_path=metrics_path,
        collage_path=collage_path,
        best_collage_path=best_collage_path,
    )


def evaluate_run(paths: DatasetPaths, run_dir: Path, **options: Any) -> EvaluationResult:
    """Score the run in ``run_dir`` (its ``latest.pt``) on the held-out shard its ``config.yaml`` recorded;
    ``options`` go to :func:`evaluate_checkpoint`."""
    checkpoint = run_dir / "latest.pt"
    if not checkpoint.is_file():
        raise FileNotFoundError(f"no checkpoint at {checkpoint}: materialize {paths.root.name}/colorizer first")
    holdout, train_shards = trained_split(run_dir)
    return evaluate_checkpoint(paths, checkpoint, holdout, train_shards=train_shards, **options)
