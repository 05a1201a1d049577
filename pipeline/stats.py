"""Dataset statistics under ``stats/``: what the Lab shards, the tag tokens and the tags look like.

The pixel histograms stream over the shards through memory maps, a bounded window of rows at a time,
with the shards spread over a process pool, so a 1M-image dataset needs no more memory than the sample.
Every other figure comes from the small tables (``images.parquet``, ``tokens.npy``, ``tags.parquet``).
The results are written as Parquet tables, rendered by :mod:`pipeline.report`, and returned for Dagster
metadata.
"""

from __future__ import annotations

import math
import multiprocessing
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.convert import init_opencv_worker
from pipeline.core.color import LAB_OFFSET, LAB_SCALE
from pipeline.core.contract import (
    INVALID_REASONS,
    O200K_ORDINARY_TOKENS,
    O200K_VOCAB_SIZE,
    PAD_ID,
    TOKENS_PER_IMAGE,
    VOCAB_SIZE_WITH_PAD,
)
from pipeline.core.files import atomic_path
from pipeline.core.layout import (
    CheckRecord,
    DataError,
    DatasetLayout,
    DatasetPaths,
    alignment_problems,
    open_shard,
    open_tokens,
    read_images_table,
    read_layout,
    read_words,
    table_errors,
)
from pipeline.core.render import inline_images
from pipeline.report import write_report

CHANNELS = ("L", "a", "b")

PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
TOP_TAGS = 1000
"""Rows kept in ``top_tags.parquet``; the long tail only matters through ``tag_summary``."""
METADATA_ROWS = 20

_EXACT_PIXELS = 2**24
"""``cv2.calcHist`` counts in float32, exact up to 2²⁴: one call never sees more pixels than that."""
_TOKEN_ROWS = 65536


@dataclass(frozen=True)
class DataStatsResult:
    """What the ``data_stats`` asset reports: watched numbers, small tables and the files written."""

    figures: dict[str, float | int]
    tables: dict[str, pd.DataFrame]
    report_path: Path
    plot_paths: dict[str, Path]
    seconds: float
    bytes_scanned: int

    @property
    def metadata(self) -> dict[str, object]:
        """The report (its file, and its text with the plots embedded, for the UI's preview), every figure, the
        plots' files and the small tables."""
        return {
            "preview": inline_images(self.report_path.read_text(), self.report_path.parent),
            **self.figures,
            "report": self.report_path,
            **{f"plot/{name}": path for name, path in self.plot_paths.items()},
            **{f"table/{name}": frame for name, frame in self.tables.items()},
            "seconds": self.seconds,
            "gb_scanned": self.bytes_scanned / 1e9,
        }


def channel_histograms(shard_path: Path, valid_rows: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Counts of each encoded value (0 … 255) of L, a and b over ``valid_rows`` of one shard: (3, 256).

    Rows are read at most ``chunk`` images at a time through a fresh memory map each, so neither the mapping
    nor the resident set grows with the shard. OpenCV's ``calcHist`` counts one channel of the interleaved
    window per pass, several times faster than ``np.bincount`` (which widens every byte to int64).
    """
    header = np.load(shard_path, mmap_mode="r")
    if header.dtype != np.uint8 or header.ndim != 4 or header.shape[3] != 3:
        raise ValueError(f"{shard_path}: expected uint8 (n, S, S, 3), got {header.dtype} {header.shape}")
    n_rows, (height, width), offset = header.shape[0], header.shape[1:3], header.offset
    del header
    rows = np.unique(np.asarray(valid_rows, dtype=np.int64))
    if rows.size and (rows[0] < 0 or rows[-1] >= n_rows):
        raise ValueError(f"{shard_path}: valid rows must lie in 0 … {n_rows - 1}")
    if height * width > _EXACT_PIXELS:
        raise ValueError(f"{shard_path}: images of {height}×{width} are too large to count exactly")
    counts = np.zeros((3, 256), dtype=np.int64)
    for start, stop in _row_windows(rows, min(chunk, _EXACT_PIXELS // (height * width))):
        window = np.memmap(
            shard_path,
            dtype=np.uint8,
            mode="r",
            offset=offset + start * height * width * 3,
            shape=((stop - start) * height, width, 3),
        )
        for channel in range(3):
            counts[channel] += cv2.calcHist([window], [channel], None, [256], [0, 256]).ravel().astype(np.int64)
        del window
    return counts


def _row_windows(rows: np.ndarray, chunk: int) -> Iterator[tuple[int, int]]:
    """Contiguous runs of ``rows`` (sorted, unique), cut into windows of at most ``chunk`` rows."""
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")
    for run in np.split(rows, np.flatnonzero(np.diff(rows) != 1) + 1):
        if run.size:
            for start in range(int(run[0]), int(run[-1]) + 1, chunk):
                yield start, min(start + chunk, int(run[-1]) + 1)


def shard_channel_histograms(
    shard_paths: Sequence[Path], valid_rows: Sequence[np.ndarray], workers: int = 1
) -> np.ndarray:
    """Sum of :func:`channel_histograms` over shards, one shard per task on ``workers`` processes.

    Workers are spawned, not forked: the caller may be a multi-threaded Dagster process.
    """
    if len(shard_paths) != len(valid_rows):
        raise ValueError("one array of valid rows per shard is needed")
    if workers <= 1 or len(shard_paths) <= 1:
        hists = [channel_histograms(path, rows) for path, rows in zip(shard_paths, valid_rows, strict=True)]
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            min(workers, len(shard_paths)), mp_context=context, initializer=init_opencv_worker
        ) as pool:
            hists = list(pool.map(channel_histograms, shard_paths, valid_rows))
    return np.sum(hists, axis=0, dtype=np.int64) if hists else np.zeros((3, 256), dtype=np.int64)


def histogram_summary(counts: np.ndarray) -> dict[str, float]:
    """Mean, std, min, percentiles and max of integer values 0, 1, … given their counts.

    A percentile ``p`` is the smallest value whose cumulative count reaches ``p``% of all (the "inverted
    CDF" definition), so it is always a value that occurs, and exact from a histogram.
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    keys = ["mean", "std", "min", *(f"p{p}" for p in PERCENTILES), "max"]
    if total == 0:
        return dict.fromkeys(keys, math.nan)
    values = np.arange(counts.size, dtype=np.float64)
    mean = float(values @ counts) / total
    std = math.sqrt(float(((values - mean) ** 2) @ counts) / total)
    cumulative = np.cumsum(counts)
    used = np.flatnonzero(counts)
    summary = {"mean": mean, "std": std, "min": float(used[0])}
    for p in PERCENTILES:
        summary[f"p{p}"] = float(np.searchsorted(cumulative, p / 100 * total, side="left"))
    summary["max"] = float(used[-1])
    return summary


def channel_tables(hist: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``channels`` (256 rows: value, L, a, b counts) and ``channel_summary`` in encoded and Lab units."""
    channels = pd.DataFrame({"value": np.arange(256, dtype=np.int64)} | dict(zip(CHANNELS, hist, strict=True)))
    rows = []
    for name, counts in zip(CHANNELS, hist, strict=True):
        encoded = histogram_summary(counts)
        lab = {
            key: value * LAB_SCALE[name] + (0.0 if key == "std" else LAB_OFFSET[name]) for key, value in encoded.items()
        }
        pixels = int(counts.sum())
        rows.append({"channel": name, "units": "encoded", "pixels": pixels} | encoded)
        rows.append({"channel": name, "units": "Lab", "pixels": pixels} | lab)
    return channels, pd.DataFrame(rows)


def shard_table(images: pd.DataFrame, n_shards: int) -> pd.DataFrame:
    """Per shard: images, valid, invalid (in total and per reason), grayscale and mean colourfulness.

    Grayscale and colourfulness count valid images only: an invalid row holds zeros, not a photo.
    """
    shards = pd.Index(range(n_shards), name="shard")
    by_shard = images.groupby("shard")
    valid = images[images["valid"]]
    invalid = images[~images["valid"]]
    table = pd.DataFrame(
        {
            "images": by_shard.size(),
            "valid": by_shard["valid"].sum(),
            "invalid": invalid.groupby("shard").size(),
        },
        index=shards,
    )
    reasons = pd.crosstab(invalid["shard"], invalid["reason"]).reindex(index=shards, columns=INVALID_REASONS)
    for reason in INVALID_REASONS:
        table[f"invalid_{reason}"] = reasons[reason]
    table["grayscale"] = valid.groupby("shard")["is_grayscale"].sum()
    table = table.fillna(0).astype(np.int64)
    table["mean_colorfulness"] = valid.groupby("shard")["colorfulness"].mean().astype(np.float64)
    return table.reset_index()


def tokenizer_table(layout: DatasetLayout) -> pd.DataFrame:
    """The seed's argument for o200k against whole-tag words, side by side, one row per tokenizer on disk.

    Over the kept ids (pad excluded): the vocabulary's size, its ids never used, the ids occurring once
    (count and share of the ids used), the share of tagged images whose kept ids are all such singletons, and
    the share of the held-out shard's id occurrences absent from the training shards' vocabulary.
    """
    paths = layout.paths
    rows = []
    sources = [("o200k", open_tokens(paths), PAD_ID, O200K_ORDINARY_TOKENS)]
    if paths.tag_words.is_file() and paths.words.is_file():
        sources.append(("words", open_tokens(paths, words=True), 0, len(read_words(paths)) - 1))
    held_out = layout.shard_ids(layout.holdout_shard)
    for name, ids, pad, vocabulary in sources:
        held = np.zeros(len(ids), dtype=bool)
        held[held_out.start : held_out.stop] = True
        counts = np.bincount(np.asarray(ids).ravel(), minlength=pad + 1)
        counts[pad] = 0
        used = int((counts > 0).sum())
        singleton = counts == 1
        kept = np.asarray(ids) != pad
        tagged = kept.any(axis=1)
        all_singletons = tagged & (~kept | singleton[np.asarray(ids)]).all(axis=1)
        training = np.bincount(np.asarray(ids[~held]).ravel(), minlength=len(counts))
        held_ids = np.asarray(ids[held])[np.asarray(ids[held]) != pad]
        rows.append(
            {
                "tokenizer": name,
                "per_image": ids.shape[1],
                "vocabulary": vocabulary,
                "used": used,
                "never_used": vocabulary - used,
                "singletons": int(singleton.sum()),
                "share_singletons": float(singleton.sum()) / used if used else math.nan,
                "share_images_all_singletons": float(all_singletons.sum()) / tagged.sum() if tagged.any() else math.nan,
                "share_held_out_unseen": float((training[held_ids] == 0).mean()) if held_ids.size else math.nan,
            }
        )
    return pd.DataFrame(rows)


def token_tables(
    tokens: np.ndarray, full_counts: np.ndarray, decode_token: Callable[[int], str]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``token_frequencies``, ``token_summary`` (one row) and ``tokens_per_image`` from the token matrix.

    ``full_counts`` are the per-image token counts before truncation to the kept 20.
    """
    if tokens.ndim != 2 or tokens.shape[1] != TOKENS_PER_IMAGE:
        raise ValueError(f"tokens must have shape (N, {TOKENS_PER_IMAGE}), got {tokens.shape}")
    if len(full_counts) != len(tokens):
        raise ValueError(f"{len(full_counts)} token counts for {len(tokens)} token rows")
    counts = np.zeros(VOCAB_SIZE_WITH_PAD, dtype=np.int64)
    images = np.zeros(VOCAB_SIZE_WITH_PAD, dtype=np.int64)
    kept = np.zeros(TOKENS_PER_IMAGE + 1, dtype=np.int64)
    for start in range(0, len(tokens), _TOKEN_ROWS):
        rows = np.asarray(tokens[start : start + _TOKEN_ROWS], dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() > PAD_ID):
            raise ValueError(f"token ids must lie in 0 … {PAD_ID}")
        counts += np.bincount(rows.ravel(), minlength=VOCAB_SIZE_WITH_PAD)
        ordered = np.sort(rows, axis=1)
        first = np.ones(ordered.shape, dtype=bool)
        first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
        images += np.bincount(ordered[first], minlength=VOCAB_SIZE_WITH_PAD)
        kept += np.bincount((rows != PAD_ID).sum(axis=1), minlength=TOKENS_PER_IMAGE + 1)
    counts, images = counts[:PAD_ID], images[:PAD_ID]
    used = np.flatnonzero(counts)
    order = used[np.lexsort((used, -counts[used]))]
    frequencies = pd.DataFrame(
        {
            "id": order.astype(np.int64),
            "text": [decode_token(int(i)) for i in order],
            "count": counts[order],
            "images": images[order],
        }
    )
    full_counts = np.asarray(full_counts, dtype=np.int64)
    full = np.bincount(full_counts, minlength=TOKENS_PER_IMAGE + 1)
    per_image = pd.DataFrame(
        {
            "tokens": np.arange(full.size, dtype=np.int64),
            "kept": np.pad(kept, (0, full.size - kept.size)),
            "full": full,
        }
    )
    n_images = len(tokens)
    truncated = int((full_counts > TOKENS_PER_IMAGE).sum())
    summary = {
        "vocab_size_with_pad": VOCAB_SIZE_WITH_PAD,
        "non_pad_ids": O200K_VOCAB_SIZE,
        "distinct_tokens": int(used.size),
        "never_used_tokens": O200K_VOCAB_SIZE - int(used.size),
        "share_never_used": (O200K_VOCAB_SIZE - used.size) / O200K_VOCAB_SIZE,
        "ordinary_ids": O200K_ORDINARY_TOKENS,
        "ordinary_never_used": O200K_ORDINARY_TOKENS - int((used < O200K_ORDINARY_TOKENS).sum()),
        "share_ordinary_never_used": 1 - (used < O200K_ORDINARY_TOKENS).sum() / O200K_ORDINARY_TOKENS,
        "token_occurrences": int(counts.sum()),
        "images": n_images,
        "truncated_images": truncated,
        "share_truncated": truncated / n_images if n_images else math.nan,
    }
    summary |= {f"kept_{k}": v for k, v in histogram_summary(kept).items()}
    summary |= {f"full_{k}": v for k, v in histogram_summary(full).items()}
    return frequencies, pd.DataFrame([summary]), per_image


def tag_tables(tags_path: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``tag_summary`` (one row), ``top_tags`` and ``tags_per_image`` from ``tags.parquet``.

    Counts are occurrences over all images; a tag "occurring once" is used by exactly one image once.
    """
    lists = pq.read_table(tags_path, columns=["tags"]).column("tags")
    per_image = pc.fill_null(pc.list_value_length(lists), 0).to_numpy().astype(np.int64)
    counted = pc.value_counts(pc.list_flatten(lists))
    frequencies = pd.DataFrame(
        {
            "tag": counted.field("values").to_pylist(),
            "count": counted.field("counts").to_numpy().astype(np.int64),
        }
    ).sort_values(["count", "tag"], ascending=[False, True], ignore_index=True)
    histogram = np.bincount(per_image, minlength=1)
    n_images, distinct = len(per_image), len(frequencies)
    singletons = int((frequencies["count"] == 1).sum())
    without = int(histogram[0]) if n_images else 0
    summary = {
        "images": n_images,
        "tag_occurrences": int(per_image.sum()),
        "distinct_tags": distinct,
        "singleton_tags": singletons,
        "share_singleton": singletons / distinct if distinct else math.nan,
        "images_without_tags": without,
        "share_without_tags": without / n_images if n_images else math.nan,
    }
    summary |= {f"per_image_{k}": v for k, v in histogram_summary(histogram).items()}
    tags_per_image = pd.DataFrame({"tags": np.arange(histogram.size, dtype=np.int64), "images": histogram})
    return pd.DataFrame([summary]), frequencies.head(TOP_TAGS), tags_per_image


ALIGNMENT_CHECK = "tokens_align_with_images"


def check_alignment(paths: DatasetPaths, n_images: int) -> str:
    """The ``tokens_align_with_images`` check (:func:`alignment_problems`), its verdict recorded with the dataset
    (:class:`CheckRecord`): the first step that reads both tables runs it, whichever of them was written last."""
    problems = alignment_problems(paths, n_images)
    CheckRecord(ALIGNMENT_CHECK, "data_stats", problems).write(paths)
    return problems


def compute_data_stats(
    paths: DatasetPaths, n_shards: int, decode_token: Callable[[int], str], workers: int = 1
) -> DataStatsResult:
    """Compute every table, write them with ``data_stats.md`` and the plots under ``paths.stats``; refused while
    a recorded data check has not passed (:func:`read_layout`).

    ``decode_token`` gives a token id's text (:func:`pipeline.core.vocabulary.token_text`).
    """
    began = time.perf_counter()
    layout = read_layout(paths.root)
    images = read_images_table(paths)
    present = set(images["shard"].unique().tolist())
    if present != set(range(n_shards)):
        missing, extra = sorted(set(range(n_shards)) - present), sorted(present - set(range(n_shards)))
        raise DataError(
            f"{paths.images_table} lacks rows of shard(s) {missing}, has rows of unexpected shard(s) {extra};"
            f" {paths.remedy('lab_shards')}"
        )
    for shard in range(n_shards):
        open_shard(paths, shard)  # every shard whole before the workers scan them
    valid_by_shard = images[images["valid"]].groupby("shard")["row"]
    valid_rows = [
        valid_by_shard.get_group(s).to_numpy() if s in valid_by_shard.groups else np.empty(0, np.int64)
        for s in range(n_shards)
    ]
    scan_began = time.perf_counter()
    hist = shard_channel_histograms([paths.shard(s) for s in range(n_shards)], valid_rows, workers)
    scan_seconds = time.perf_counter() - scan_began
    bytes_scanned = int(hist[0].sum()) * 3

    with table_errors(paths.tags_table, paths.remedy("tag_tokens")):
        full_counts = pq.read_table(paths.tags_table, columns=["n_tokens"]).column("n_tokens").to_numpy()
        tag_summary, top_tags, tags_per_image = tag_tables(paths.tags_table)
    channels, channel_summary = channel_tables(hist)
    token_frequencies, token_summary, tokens_per_image = token_tables(open_tokens(paths), full_counts, decode_token)
    shards = shard_table(images, n_shards)
    tokenizers = tokenizer_table(layout)
    tables = {
        "channels": channels,
        "channel_summary": channel_summary,
        "shards": shards,
        "token_frequencies": token_frequencies,
        "token_summary": token_summary,
        "tokens_per_image": tokens_per_image,
        "tag_summary": tag_summary,
        "top_tags": top_tags,
        "tags_per_image": tags_per_image,
        "tokenizers": tokenizers,
    }
    for name, frame in tables.items():
        with atomic_path(paths.stats / f"{name}.parquet", suffix=".parquet") as tmp:
            frame.to_parquet(tmp, index=False)

    valid = images[images["valid"]]
    lab_means = channel_summary[channel_summary["units"] == "Lab"].set_index("channel")
    figures: dict[str, float | int] = {
        "images": len(images),
        "valid_images": len(valid),
        "invalid_images": len(images) - len(valid),
        "share_valid": len(valid) / len(images) if len(images) else math.nan,
        "grayscale_images": int(valid["is_grayscale"].sum()),
        "mean_colorfulness": float(valid["colorfulness"].mean()) if len(valid) else math.nan,
    }
    for name in CHANNELS:
        figures[f"{name}_mean"] = float(lab_means.loc[name, "mean"])
        figures[f"{name}_std"] = float(lab_means.loc[name, "std"])
    token_row, tag_row = token_summary.iloc[0], tag_summary.iloc[0]
    figures |= {
        "distinct_tokens": int(token_row["distinct_tokens"]),
        "share_tokens_never_used": float(token_row["share_never_used"]),
        "share_images_truncated": float(token_row["share_truncated"]),
        "mean_tokens_per_image": float(token_row["kept_mean"]),
        "distinct_tags": int(tag_row["distinct_tags"]),
        "share_singleton_tags": float(tag_row["share_singleton"]),
        "images_without_tags": int(tag_row["images_without_tags"]),
        "mean_tags_per_image": float(tag_row["per_image_mean"]),
        "scan_gb_per_s": bytes_scanned / 1e9 / scan_seconds if scan_seconds > 0 else math.nan,
    }
    report_path, plot_paths = write_report(paths.stats, paths.root.name, tables, figures, bytes_scanned)
    return DataStatsResult(
        figures=figures,
        tables={
            "channel_summary": channel_summary,
            "shards": shards,
            "token_summary": token_summary,
            "tag_summary": tag_summary,
            "top_tokens": token_frequencies.head(METADATA_ROWS),
            "top_tags": top_tags.head(METADATA_ROWS),
            "tokenizers": tokenizers,
        },
        report_path=report_path,
        plot_paths=plot_paths,
        seconds=time.perf_counter() - began,
        bytes_scanned=bytes_scanned,
    )
