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

import datetime
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import torch

from model.checkpoint import run_checkpoint
from model.collage import coloured_collage, with_ab
from model.data import checkpoint_ids, tag_ids
from model.device import resolve_device
from model.fid import GaussianMoments, MetricUnavailable, frechet_distance, inception_features, lpips_distance
from model.inference import Colorizer
from model.metrics import ImageMetrics, Reference, image_metrics
from model.photo_sets import (
    IMAGE_COLUMNS,
    EvaluationSet,
    PhotoFiles,
    Protocol,
    colour_photos,
    holdout_set,
    photo_set,
    read_rows,
    seeded_subset,
)
from pipeline.core.color import NEUTRAL_AB, lab_u8_to_rgb
from pipeline.core.config import ConfigError
from pipeline.core.files import atomic_write_text, file_digest, reports_disk_full
from pipeline.core.layout import (
    EVALUATIONS,
    RUN_CONFIG,
    DataError,
    DatasetPaths,
    read_images_table,
    read_layout,
    read_run_config,
)
from pipeline.core.render import Markdown, markdown_table, preview_markdown
from pipeline.core.vocabulary import parse_tags

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
DEFAULT_STEERING = ("sunset", "snow", "forest", "sea")
"""Alternative tag sets of the steering collage where the dataset names none."""


GREY_PSNR_MARGIN = 0.5
"""dB of PSNR below the grey baseline's that ``beats_grey`` lets pass (rounding and the odd photo)."""
HISTORY_ROWS = 10
"""Scorings of the run the evaluation preview lists, the newest last."""
HISTORY_FIGURES = ("ab_error/tags", "psnr/tags", "hue_error/tags", "delta_cf/tags", "grey_gain", "tag_gain")


def grey_problems(figures: dict[str, Any]) -> str:
    """The ``beats_grey`` check: '' when, with their true tags, the photos come out no worse than left grey (ab
    error not above grey's, PSNR no more than :data:`GREY_PSNR_MARGIN` below it); else what is worse, in figures."""
    problems = []
    if figures["ab_error/tags"] > figures["ab_error/grey"]:
        problems.append(f"ab error {figures['ab_error/tags']:.2f} is above grey's {figures['ab_error/grey']:.2f}")
    if figures["psnr/tags"] < figures["psnr/grey"] - GREY_PSNR_MARGIN:
        problems.append(
            f"PSNR {figures['psnr/tags']:.2f} dB is more than {GREY_PSNR_MARGIN} dB below grey's"
            f" {figures['psnr/grey']:.2f} dB"
        )
    return "; ".join(problems)


def read_history(run_dir: Path, rows: int = HISTORY_ROWS) -> pd.DataFrame:
    """The run's last ``rows`` scorings (``evaluations.jsonl``): when, which checkpoint and step, on what, and the
    headline figures; a line a killed writer left half written is passed over."""
    path = run_dir / EVALUATIONS
    records = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else ():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    table = [
        {
            "time": record.get("time", ""),
            "checkpoint": Path(str(record.get("checkpoint", ""))).name,
            "step": record.get("step"),
            "evaluated_on": record.get("evaluated_on", ""),
            **{name: record.get("figures", {}).get(name) for name in HISTORY_FIGURES},
        }
        for record in records[-rows:]
    ]
    return pd.DataFrame(table)


@dataclass(frozen=True)
class EvaluationResult:
    """``metrics`` as written to ``metrics.json``; ``figures`` flat (``ab_error/tags``, …) for asset metadata;
    ``beats_grey`` the check's problems ('' when the photos come out no worse than grey); ``history`` the run's
    last scorings."""

    metrics: dict[str, Any]
    figures: dict[str, float | int | str]
    metrics_path: Path
    collage_path: Path
    best_collage_path: Path
    steering_collage_path: Path
    beats_grey: str
    history: pd.DataFrame
    per_image_ab_error: dict[str, np.ndarray] = field(default_factory=dict)
    """Each photo's ab error (in ``metrics["image_ids"]`` order) per condition and baseline."""

    @property
    def metadata(self) -> dict[str, object]:
        """The verdict on grey, what was scored with which checkpoint, the run's history and the three collages
        inline (the UI's preview), the headline figures, then the files."""
        verdict = (
            f"**Worse than leaving the photos grey**: {self.beats_grey}."
            if self.beats_grey
            else f"Better than grey: ab error {self.figures['ab_error/tags']:.2f} against"
            f" {self.figures['ab_error/grey']:.2f}, PSNR {self.figures['psnr/tags']:.2f} against"
            f" {self.figures['psnr/grey']:.2f} dB."
        )
        checkpoint = Path(self.metrics["checkpoint"])
        step = self.metrics["step"]
        where = f"{self.metrics['evaluated_on']}; run {checkpoint.parent.name}, {checkpoint.name} (step {step})"
        history = f"Scorings of this run, the newest last:\n\n{markdown_table(self.history)}"
        previews = "\n\n".join(
            preview_markdown(path, title)
            for path, title in (
                (self.collage_path, "result collage"),
                (self.steering_collage_path, "tag steering"),
                (self.best_collage_path, "best photos"),
            )
        )
        return {
            "preview": Markdown(f"{verdict}\n\n{where}\n\n{history}\n\n{previews}"),
            **self.figures,
            "checkpoint": checkpoint,
            "checkpoint_step": self.metrics["step"],
            "collage": self.collage_path,
            "steering_collage": self.steering_collage_path,
            "best_collage": self.best_collage_path,
            "metrics_json": self.metrics_path,
        }


def derangement(n: int, seed: int) -> np.ndarray:
    """A seeded permutation without fixed points: a random cyclic order, each image takes the next one's."""
    if n < 2:
        raise ValueError(f"shuffling tags across images needs at least 2 images, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    permutation = np.empty(n, dtype=np.int64)
    permutation[order] = np.roll(order, -1)
    return permutation


def train_mean_ab(
    paths: DatasetPaths, images: pd.DataFrame, shards: Sequence[int], seed: int, limit: int = TRAIN_MEAN_SAMPLE
) -> tuple[np.ndarray, int]:
    """Mean encoded a, b over the colour photos of the training ``shards`` (at most ``limit`` of them, seeded).

    Returns the two means and the number of photos they were taken from.
    """
    rows = seeded_subset(colour_photos(images, shards), limit, seed)
    if rows.empty:
        raise DataError(f"no valid colour photos in training shards {list(shards)} of {paths.root}")
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


def _steering_collage(
    eval_set: EvaluationSet, tokens: np.ndarray, colorizer: Colorizer, steering: Sequence[str], rows: int, path: Path
) -> Path:
    """Grey input | own tags | no tags | each alternative tag set | original, for the first ``rows`` photos."""
    positions = np.arange(min(rows, len(eval_set)))
    alternatives = [tag_ids(parse_tags(text), colorizer.index) for text in steering]
    token_sets = [tokens[positions], np.full_like(tokens[positions], colorizer.index.pad)]
    token_sets += [np.repeat(alternative[None], len(positions), axis=0) for alternative in alternatives]
    return coloured_collage(eval_set, positions, token_sets, colorizer, path, ("own tags", "no tags", *steering))


@dataclass(frozen=True)
class Scores:
    """What :func:`score` measured: each photo's figures and their summary per condition and baseline, the
    learned metrics' status, and the photos' own tags as the checkpoint's ids."""

    per_image: dict[str, ImageMetrics]
    summaries: dict[str, dict[str, float]]
    learned_status: dict[str, str]
    true_tokens: np.ndarray

    @property
    def headline(self) -> dict[str, float]:
        """Each other ab error divided by the ab error with the true tags: above 1, the tags help that much."""
        error = {name: float(summary["ab_error"]) for name, summary in self.summaries.items()}
        gains = {"tag_gain": "shuffled", "pad_gain": "pad", "grey_gain": "grey", "train_mean_gain": "train_mean"}
        return {gain: _ratio(error[name], error["tags"]) for gain, name in gains.items() if name in error}


def score(
    eval_set: EvaluationSet,
    colorizer: Colorizer,
    *,
    train_mean: tuple[np.ndarray, dict[str, Any]] | str,
    seed: int,
    batch_size: int,
    device: str,
) -> Scores:
    """Every photo of ``eval_set`` under the three tag conditions and the baselines (``train_mean`` where it is
    not the reason it is missing), batch by batch: the field's per-image metrics, FID and LPIPS where they run."""
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
    return Scores(per_image=per_image, summaries=summaries, learned_status=learned.status, true_tokens=true_tokens)


def metrics_record(
    eval_set: EvaluationSet,
    checkpoint: Path,
    step: int | None,
    scores: Scores,
    train_mean: tuple[np.ndarray, dict[str, Any]] | str,
    seed: int,
) -> dict[str, Any]:
    """``metrics.json``: what was scored, how, and every summary."""
    return {
        "checkpoint": str(checkpoint),
        "step": step,
        "evaluated_on": eval_set.description,
        "protocol": eval_set.protocol,
        **{key: eval_set.protocol[key] for key in ("holdout_shard",) if key in eval_set.protocol},
        "seed": seed,
        "n_images": len(eval_set),
        "headline": scores.headline,
        "conditions": {name: scores.summaries[name] for name in CONDITIONS},
        "baselines": {name: summary for name, summary in scores.summaries.items() if name in BASELINES},
        "learned_metrics": scores.learned_status,
        "train_mean_ab": train_mean[1] if not isinstance(train_mean, str) else f"unavailable: {train_mean}",
        "image_ids": eval_set.image_ids.tolist(),
    }


def figures(eval_set: EvaluationSet, scores: Scores) -> dict[str, float | int | str]:
    """The figures an evaluation reports (asset metadata): the headline, then ``<metric>/<condition>``."""
    out: dict[str, float | int | str] = {"n_images": len(eval_set), **scores.headline}
    for name, summary in scores.summaries.items():
        out |= {f"{key}/{name}": value for key, value in summary.items() if key != "n_images"}
    return out | {f"{metric}_status": status for metric, status in scores.learned_status.items()}


def append_evaluation(checkpoint: Path, metrics: dict[str, Any], reported: dict[str, Any]) -> Path:
    """One line in the scored run's ``evaluations.jsonl`` (as stylegan2-ada's ``metric-*.jsonl``), whatever
    dataset it was scored on: when, the checkpoint (path, step, SHA-256), on what and how, and every figure.
    Appended, never rewritten: the run's whole history of scorings stays."""
    path = checkpoint.parent / EVALUATIONS
    record = {
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "checkpoint": str(checkpoint),
        "step": metrics["step"],
        "sha256": file_digest(checkpoint, "sha256"),
        **{key: metrics[key] for key in ("evaluated_on", "protocol", "seed", "n_images")},
        "figures": reported,
    }
    line = json.dumps(_finite_or_none(record), allow_nan=False) + "\n"
    with reports_disk_full(path, "the run's evaluation history"), path.open("a", encoding="utf-8") as file:
        file.write(line)
        file.flush()
        os.fsync(file.fileno())
    return path


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
    """Score ``checkpoint`` on ``eval_set`` (:func:`score`); write ``metrics.json`` and three collages into
    ``out_dir``.

    ``train_mean`` is the ``train_mean`` baseline's a, b and where they come from, or the reason it is
    missing (:func:`run_train_mean`). The collages show the first ``collage_rows`` photos, the
    ``collage_rows`` with the lowest ab error under their own tags, and ``steering_rows`` photos under their
    own tags, none, and each tag set of ``steering``.
    """
    if min(collage_rows, batch_size, steering_rows) <= 0:
        raise ConfigError(
            f"collage_rows, steering_rows and batch_size must be positive, got {collage_rows}, {steering_rows}"
            f" and {batch_size}"
        )
    if len(eval_set) < 2:
        raise DataError(f"{eval_set.description}: at least 2 photos are needed (tags are shuffled among them)")
    colorizer = Colorizer.from_checkpoint(checkpoint, device=device)
    scores = score(eval_set, colorizer, train_mean=train_mean, seed=seed, batch_size=batch_size, device=device)
    metrics = metrics_record(eval_set, checkpoint, colorizer.step, scores, train_mean, seed)
    metrics_path = out_dir / METRICS_NAME
    atomic_write_text(metrics_path, json.dumps(_finite_or_none(metrics), indent=2, allow_nan=False) + "\n")
    reported = figures(eval_set, scores)
    append_evaluation(checkpoint, metrics, reported)

    tokens = scores.true_tokens
    first = np.arange(min(collage_rows, len(eval_set)))
    best = np.sort(np.argsort(scores.per_image["tags"].ab_error, kind="stable")[: len(first)])
    return EvaluationResult(
        metrics=metrics,
        figures=reported,
        beats_grey=grey_problems(reported),
        history=read_history(checkpoint.parent),
        per_image_ab_error={name: values.ab_error for name, values in scores.per_image.items()},
        metrics_path=metrics_path,
        collage_path=coloured_collage(eval_set, first, [tokens[first]], colorizer, out_dir / COLLAGE_NAME),
        best_collage_path=coloured_collage(eval_set, best, [tokens[best]], colorizer, out_dir / BEST_COLLAGE_NAME),
        steering_collage_path=_steering_collage(
            eval_set, tokens, colorizer, steering, steering_rows, out_dir / STEERING_COLLAGE_NAME
        ),
    )


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


def score_run(
    paths: DatasetPaths,
    run_dir: Path,
    *,
    photos: PhotoFiles | None = None,
    protocol: Protocol | None = None,
    n_images: int | None = 256,
    seed: int = 0,
    device: str = "auto",
    **options: Any,
) -> EvaluationResult:
    """The one scoring entry point, of the ``evaluation`` asset and of ``python -m pipeline.commands.evaluate``:
    the run in ``run_dir`` on the held-out shard of ``paths`` (:func:`evaluate_run`), or, given ``photos`` and a
    ``protocol``, on a folder dataset's original files (``split: all``). ``options`` go to :func:`evaluate`."""
    device = str(resolve_device(device))
    if protocol is None:
        return evaluate_run(paths, run_dir, n_images=n_images, seed=seed, device=device, **options)
    if photos is None:
        raise ConfigError(f"split: all scores the original photo files of a folder dataset; {paths.root.name} has none")
    eval_set = photo_set(paths, photos.names, photos.read, run_tokenizer(run_dir), protocol)
    train_mean = run_train_mean(run_dir, seed)
    checkpoint = run_checkpoint(run_dir)
    return evaluate(eval_set, checkpoint, paths.evaluation, train_mean=train_mean, seed=seed, device=device, **options)
