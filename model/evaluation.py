"""Score a trained run on any set of photos: the field's metrics under three tag conditions, two baselines,
and three collages (first photos, best photos, tag steering).

The conditions separate what the tags contribute from what the photo's lightness alone gives away:

- ``tags``: each photo with its own tags, as in use;
- ``pad``: every token ``<|pad|>``, the model without any tag;
- ``shuffled``: each photo with another photo's tags (a seeded derangement), so tags are present and
  plausible but wrong. ``tag_gain = ab_error(shuffled) / ab_error(tags)`` above 1 means the model reads
  its tags rather than ignoring them.

The baselines are what any colorizer must beat: ``grey`` (a = b = 0) and ``train_mean`` (the mean a, b of
the run's training photos, everywhere). Each headline ``*_gain`` divides the ab error of a condition or
baseline by the ab error with the true tags: above 1, the model with its tags does better.

The photos are an :class:`EvaluationSet`: a dataset's held-out shard (:func:`holdout_set`, 224² Lab as
stored), or original photo files under a protocol (:func:`photo_set`: e.g. DDColor's first 5,000 by file
name, center-cropped to 256²). The run may come from any dataset: tag ids are mapped into the checkpoint's
own index. The selection depends only on the seed, so runs compare.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np
import pandas as pd
import torch
from PIL import Image

from model.colorize import parse_tags, tag_ids
from model.data import checkpoint_ids, token_rows
from model.fid import GaussianMoments, MetricUnavailable, frechet_distance, inception_features, lpips_distance
from model.inference import Colorizer
from model.metrics import ImageMetrics, Reference, image_metrics
from pipeline.core.color import NEUTRAL_AB, lab_u8_to_rgb, rgb_to_lab_u8
from pipeline.core.files import atomic_write_text
from pipeline.core.layout import (
    LATEST_CHECKPOINT,
    RUN_CONFIG,
    DataError,
    DatasetPaths,
    open_shard,
    read_images_table,
    read_layout,
    read_run_config,
    read_table,
)
from pipeline.core.photos import center_square, srgb_pixels
from pipeline.core.render import CollageRow, Markdown, preview_markdown, render_collage

CONDITIONS = ("tags", "pad", "shuffled")
BASELINES = ("grey", "train_mean")
TRAIN_MEAN_SAMPLE = 2000
"""Training photos read for the mean a, b: enough for a stable mean, few enough to read in seconds."""
READ_CHUNK = 256
"""Photos read from the shards at once when averaging."""
METRICS_NAME = "metrics.json"
COLLAGE_NAME = "result_collage.png"
BEST_COLLAGE_NAME = "result_collage_best.png"
STEERING_COLLAGE_NAME = "steering_collage.png"
MIN_TILE = 128
"""Smaller photos are enlarged in collages so that column titles and captions stay legible."""
IMAGE_COLUMNS = ["image_id", "shard", "row", "valid", "is_grayscale"]
DEFAULT_STEERING = ("sunset", "snow", "forest", "sea")
"""Alternative tag sets of the steering collage where the dataset names none."""
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
            raise ValueError(f"crop must be one of {CROPS}, got {self.crop!r}")
        if self.size < 16:
            raise ValueError(f"size must be at least 16 pixels, got {self.size}")
        if self.first_n is not None and self.first_n <= 0:
            raise ValueError(f"first_n must be positive or null, got {self.first_n}")


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


@dataclass(frozen=True)
class EvaluationResult:
    """``metrics`` as written to ``metrics.json``; ``figures`` flat (``ab_error/tags``, …) for asset metadata."""

    metrics: dict[str, Any]
    figures: dict[str, float | int | str]
    metrics_path: Path
    collage_path: Path
    best_collage_path: Path
    steering_collage_path: Path

    @property
    def metadata(self) -> dict[str, object]:
        """The three collages inline (the UI's preview), the headline figures, then the files."""
        previews = "\n\n".join(
            preview_markdown(path, title)
            for path, title in (
                (self.collage_path, "result collage"),
                (self.steering_collage_path, "tag steering"),
                (self.best_collage_path, "best photos"),
            )
        )
        where = f"{self.metrics['evaluated_on']}, run {Path(self.metrics['checkpoint']).parent.name}"
        return {
            "preview": Markdown(f"{where}\n\n{previews}"),
            **self.figures,
            "collage": self.collage_path,
            "steering_collage": self.steering_collage_path,
            "best_collage": self.best_collage_path,
            "metrics_json": self.metrics_path,
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
        array = open_shard(paths, int(shard))
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
        raise ValueError(f"held-out shard {holdout_shard} has no valid colour photos to evaluate on")
    return EvaluationSet.of(
        paths,
        selection["image_id"].to_numpy(),
        tokenizer,
        f"held-out shard {holdout_shard:03d} of {paths.root.name}",
        lambda positions: read_rows(paths, selection.iloc[positions]),
        {"split": "holdout", "holdout_shard": holdout_shard, "n_images": n_images, "seed": seed},
    )


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
        raise ValueError(f"{paths.root.name} has no photos to evaluate on")
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


def trained_split(run_dir: Path) -> tuple[int, list[int]]:
    """The held-out shard and the training shards of a run, as its ``config.yaml`` recorded them.

    Read, not re-validated: a run trained on a GPU is evaluated on a CPU-only machine just as well.
    """
    saved = read_run_config(run_dir)
    try:
        return int(saved["holdout_shard"]), [int(s) for s in saved["shards"]]
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(f"{run_dir / RUN_CONFIG}: no readable holdout_shard and shards ({error})") from error


def run_train_mean(run_dir: Path, seed: int) -> tuple[np.ndarray, dict[str, Any]] | str:
    """The ``train_mean`` baseline of a run, from its own training shards; the reason where they are not here."""
    saved = read_run_config(run_dir)
    paths = DatasetPaths(Path(str(saved.get("data_root", ""))))
    try:
        _, shards = trained_split(run_dir)
        shards = [s for s in shards if paths.shard(s).is_file()]
        images = read_images_table(paths, IMAGE_COLUMNS, shards)
        mean_ab, photos = train_mean_ab(paths, images, shards, seed)
    except (OSError, ValueError) as error:
        return f"the run's training photos are not readable here ({error})"
    where = {"photos": photos, "shards": shards, "data_root": str(paths.root)}
    return mean_ab, {"a": float(mean_ab[0]) - NEUTRAL_AB, "b": float(mean_ab[1]) - NEUTRAL_AB, **where}


Built = TypeVar("Built")


def _built(build: Callable[[str], Built], device: str) -> tuple[Built | None, str]:
    """A learned metric's network and ``ok``, or nothing and ``unavailable: <why and what to do>``."""
    try:
        return build(device), "ok"
    except MetricUnavailable as error:
        return None, f"unavailable: {error}"


class LearnedMetrics:
    """FID (per set, against the originals' features, computed once) and LPIPS, where they can run here."""

    def __init__(self, device: str, names: Sequence[str]) -> None:
        self.features, fid_status = _built(inception_features, device)
        self.lpips, lpips_status = _built(lpips_distance, device)
        self.status = {"fid": fid_status, "lpips": lpips_status}
        self.active = self.features is not None or self.lpips is not None
        self.moments: dict[str, GaussianMoments] = {}
        self.lpips_values: dict[str, list[np.ndarray]] = {name: [] for name in names}

    def add(self, name: str, rgb: np.ndarray, original_rgb: np.ndarray | None = None) -> None:
        """One batch of generated uint8 RGB ``(B, H, W, 3)`` of set ``name`` (``original`` for the originals)."""
        if not self.active:
            return
        tensor = torch.from_numpy(np.ascontiguousarray(rgb)).permute(0, 3, 1, 2)
        if self.features is not None:
            features = self.features(tensor).numpy()
            self.moments.setdefault(name, GaussianMoments(features.shape[1])).add(features)
        if self.lpips is not None and original_rgb is not None:
            original = torch.from_numpy(np.ascontiguousarray(original_rgb)).permute(0, 3, 1, 2)
            self.lpips_values[name].append(self.lpips(tensor, original).numpy())

    def summary(self, name: str) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.features is not None and self.moments.get(name) and self.moments["original"].count >= 2:
            out["fid"] = frechet_distance(self.moments[name], self.moments["original"])
        if self.lpips is not None and self.lpips_values[name]:
            out["lpips"] = float(np.concatenate(self.lpips_values[name]).mean())
        return out


def coloured_collage(
    eval_set: EvaluationSet,
    positions: np.ndarray,
    token_sets: Sequence[np.ndarray],
    colorizer: Colorizer,
    path: Path,
    titles: Sequence[str] = ("generated",),
) -> Path:
    """Grey input | the photos coloured under each of ``token_sets`` (one row of tags per photo) | original,
    for the photos at ``positions``."""
    lab = eval_set.read(positions)
    coloured = [lab_u8_to_rgb(with_ab(lab, colorizer.predict_ab(lab[..., 0], tokens))) for tokens in token_sets]
    grey = lab_u8_to_rgb(with_ab(lab, NEUTRAL_AB))
    originals = lab_u8_to_rgb(lab)
    collage_rows = [
        CollageRow(
            (grey[i], *(c[i] for c in coloured), originals[i]), eval_set.captions.get(int(eval_set.image_ids[p]), "")
        )
        for i, p in enumerate(positions)
    ]
    columns = ("grey input", *titles, "original")
    return render_collage(collage_rows, path, tile=max(lab.shape[1], MIN_TILE), columns=columns)


def _steering_collage(
    eval_set: EvaluationSet, tokens: np.ndarray, colorizer: Colorizer, steering: Sequence[str], rows: int, path: Path
) -> Path:
    """Grey input | own tags | no tags | each alternative tag set | original, for the first ``rows`` photos."""
    positions = np.arange(min(rows, len(eval_set)))
    alternatives = [tag_ids(parse_tags(text), colorizer.index) for text in steering]
    token_sets = [tokens[positions], np.full_like(tokens[positions], colorizer.index.pad)]
    token_sets += [np.repeat(alternative[None], len(positions), axis=0) for alternative in alternatives]
    return coloured_collage(eval_set, positions, token_sets, colorizer, path, ("own tags", "no tags", *steering))


def evaluate(
    eval_set: EvaluationSet,
    checkpoint: Path,
    out_dir: Path,
    *,
    train_mean: tuple[np.ndarray, dict[str, Any]] | str,
    collage_rows: int = 8,
    steering: Sequence[str] = DEFAULT_STEERING,
    steering_rows: int = 4,
    seed: int = 0,
    batch_size: int = 32,
    device: str = "cpu",
) -> EvaluationResult:
    """Score ``checkpoint`` on ``eval_set``; write ``metrics.json`` and three collages into ``out_dir``.

    ``train_mean`` is the ``train_mean`` baseline's a, b and where they come from, or the reason it is
    missing (:func:`run_train_mean`). The collages show the first ``collage_rows`` photos, the
    ``collage_rows`` with the lowest ab error under their own tags, and ``steering_rows`` photos under their
    own tags, none, and each tag set of ``steering``.
    """
    if min(collage_rows, batch_size, steering_rows) <= 0:
        raise ValueError(
            f"collage_rows, steering_rows and batch_size must be positive, got {collage_rows}, {steering_rows}"
            f" and {batch_size}"
        )
    if len(eval_set) < 2:
        raise ValueError(f"{eval_set.description}: at least 2 photos are needed (tags are shuffled among them)")
    colorizer = Colorizer.from_checkpoint(checkpoint, device=device)
    true_tokens = checkpoint_ids(eval_set.raw_tokens, eval_set.paths, colorizer.index)
    condition_tokens = {
        "tags": true_tokens,
        "pad": np.full_like(true_tokens, colorizer.index.pad),
        "shuffled": true_tokens[derangement(len(eval_set), seed)],
    }
    baselines = {"grey": NEUTRAL_AB}
    if not isinstance(train_mean, str):
        baselines["train_mean"] = np.rint(train_mean[0]).astype(np.uint8)
    names = [*CONDITIONS, *baselines]
    learned = LearnedMetrics(device, names)
    parts: dict[str, list[ImageMetrics]] = {name: [] for name in names}
    for start in range(0, len(eval_set), batch_size):
        positions = np.arange(start, min(start + batch_size, len(eval_set)))
        reference = Reference.of(eval_set.read(positions))
        original = reference.lab
        learned.add("original", reference.rgb)
        for name in names:
            if name in condition_tokens:
                generated = with_ab(original, colorizer.predict_ab(original[..., 0], condition_tokens[name][positions]))
            else:
                generated = with_ab(original, baselines[name])
            parts[name].append(image_metrics(generated, reference))
            if learned.active:
                learned.add(name, lab_u8_to_rgb(generated), reference.rgb)
    per_image = {name: ImageMetrics.concat(items) for name, items in parts.items()}
    summaries = {name: per_image[name].summary() | learned.summary(name) for name in names}

    error = {name: float(summary["ab_error"]) for name, summary in summaries.items()}
    headline = {
        "tag_gain": _ratio(error["shuffled"], error["tags"]),
        "pad_gain": _ratio(error["pad"], error["tags"]),
        "grey_gain": _ratio(error["grey"], error["tags"]),
        **({"train_mean_gain": _ratio(error["train_mean"], error["tags"])} if "train_mean" in error else {}),
    }
    metrics: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "evaluated_on": eval_set.description,
        "protocol": eval_set.protocol,
        **{key: eval_set.protocol[key] for key in ("holdout_shard",) if key in eval_set.protocol},
        "seed": seed,
        "n_images": len(eval_set),
        "headline": headline,
        "conditions": {name: summaries[name] for name in CONDITIONS},
        "baselines": {name: summaries[name] for name in baselines},
        "learned_metrics": learned.status,
        "train_mean_ab": train_mean[1] if not isinstance(train_mean, str) else f"unavailable: {train_mean}",
        "image_ids": eval_set.image_ids.tolist(),
    }
    metrics_path = out_dir / METRICS_NAME
    atomic_write_text(metrics_path, json.dumps(_finite_or_none(metrics), indent=2, allow_nan=False) + "\n")

    first = np.arange(min(collage_rows, len(eval_set)))
    best = np.sort(np.argsort(per_image["tags"].ab_error, kind="stable")[: len(first)])
    collage_path = coloured_collage(eval_set, first, [true_tokens[first]], colorizer, out_dir / COLLAGE_NAME)
    best_collage_path = coloured_collage(eval_set, best, [true_tokens[best]], colorizer, out_dir / BEST_COLLAGE_NAME)
    steering_path = _steering_collage(
        eval_set, true_tokens, colorizer, steering, steering_rows, out_dir / STEERING_COLLAGE_NAME
    )

    figures: dict[str, float | int | str] = {"n_images": len(eval_set), **headline}
    for name, summary in summaries.items():
        figures |= {f"{key}/{name}": value for key, value in summary.items() if key != "n_images"}
    figures |= {f"{metric}_status": status for metric, status in learned.status.items()}
    return EvaluationResult(
        metrics=metrics,
        figures=figures,
        metrics_path=metrics_path,
        collage_path=collage_path,
        best_collage_path=best_collage_path,
        steering_collage_path=steering_path,
    )


def run_checkpoint(run_dir: Path) -> Path:
    checkpoint = run_dir / LATEST_CHECKPOINT
    if not checkpoint.is_file():
        raise FileNotFoundError(f"no checkpoint at {checkpoint}: train the run first")
    return checkpoint


def evaluate_run(
    paths: DatasetPaths,
    run_dir: Path,
    *,
    n_images: int | None = 256,
    seed: int = 0,
    out_dir: Path | None = None,
    **options: Any,
) -> EvaluationResult:
    """Score the run in ``run_dir`` (its ``latest.pt``) on a held-out shard of ``paths``: the run's own when
    it was trained on this dataset, else the dataset's recorded one. Results go to ``out_dir`` (default the
    dataset's ``evaluation/``); ``options`` go to :func:`evaluate`."""
    checkpoint = run_checkpoint(run_dir)
    saved = read_run_config(run_dir)
    own = Path(str(saved.get("data_root", ""))).resolve() == paths.root.resolve()
    holdout = trained_split(run_dir)[0] if own else dataset_holdout(paths)
    eval_set = holdout_set(paths, holdout, run_tokenizer(run_dir), n_images, seed)
    train_mean = run_train_mean(run_dir, seed)
    return evaluate(eval_set, checkpoint, out_dir or paths.evaluation, train_mean=train_mean, seed=seed, **options)


def run_tokenizer(run_dir: Path) -> str:
    """The tokenizer a run was trained with (runs from before the choice existed used o200k)."""
    return str(read_run_config(run_dir).get("tokenizer", "o200k"))


def dataset_holdout(paths: DatasetPaths) -> int:
    """The held-out shard a dataset recorded, else its last shard (as training chooses it)."""
    return read_layout(paths.root).holdout_shard
