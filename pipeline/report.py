"""``data_stats.md`` and its plots, rendered from the tables :mod:`pipeline.stats` computed.

Each Markdown table sits under a ``Source: `<name>.parquet``` line and shows that file's own columns (or,
for a one-row summary, its columns as ``figure | value`` rows), so a reader, or a test, can trace every
number back to the Parquet file. Plots use matplotlib's object API with the Agg canvas: no global state.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from pipeline.core.contract import TOKENS_PER_IMAGE
from pipeline.core.files import atomic_write_text
from pipeline.core.render import format_cell, markdown_table, save_figure

REPORT_NAME = "data_stats.md"
PLOTS_DIR = "plots"
HISTOGRAM_ROWS = 31
"""Rows of the per-image histograms shown in Markdown (0 … 30); the Parquet files hold all."""
LIST_ROWS = 20


def markdown_figures(frame: pd.DataFrame) -> str:
    """A one-row table turned on its side: one ``figure | value`` line per column."""
    (row,) = frame.to_dict(orient="records")
    lines = ["| figure | value |", "|---|---|"]
    lines += [f"| {name} | {format_cell(value, name)} |" for name, value in row.items()]
    return "\n".join(lines)


def _section(
    name: str, frame: pd.DataFrame, explanation: str, max_rows: int | None = None, sideways: bool = False
) -> str:
    table = markdown_figures(frame) if sideways else markdown_table(frame, max_rows)
    shown = "" if max_rows is None or len(frame) <= max_rows else f" (first {max_rows} of {len(frame):,} rows)"
    return f"{explanation}\n\nSource: `{name}.parquet`{shown}\n\n{table}\n"


def plot_lab_histograms(channels: pd.DataFrame, path: Path) -> Path:
    """L, a and b histograms side by side, on Lab axes, as shares of pixels."""
    figure = Figure(figsize=(12, 3.5), layout="constrained")
    edges = np.arange(257, dtype=np.float64)
    for axis, (name, scale, offset) in zip(
        figure.subplots(1, 3), (("L", 100 / 255, 0.0), ("a", 1.0, -128.0), ("b", 1.0, -128.0)), strict=True
    ):
        counts = channels[name].to_numpy(dtype=np.float64)
        total = counts.sum()
        axis.stairs(100 * counts / total if total else counts, edges * scale + offset, fill=True)
        axis.set_xlabel(f"{name} (Lab units)")
        axis.set_ylabel("% of valid pixels")
        axis.set_title(name)
    return save_figure(figure, path)


def plot_count_histogram(
    values: np.ndarray, series: dict[str, np.ndarray], xlabel: str, path: Path, cutoff: int | None = None
) -> Path:
    """Images per count (tokens or tags per image), one bar series per column, cutoff marked."""
    figure = Figure(figsize=(8, 4), layout="constrained")
    axis = figure.subplots()
    width = 0.8 / len(series)
    for k, (label, counts) in enumerate(series.items()):
        axis.bar(values + (k - (len(series) - 1) / 2) * width, counts, width=width, label=label)
    if cutoff is not None:
        axis.axvline(cutoff + 0.5, color="black", linestyle="--", linewidth=1, label=f"kept ≤ {cutoff}")
    axis.set_xlabel(xlabel)
    axis.set_ylabel("images")
    axis.legend()
    return save_figure(figure, path)


def plot_rank_frequency(counts: np.ndarray, path: Path) -> Path:
    """Token count against frequency rank on log–log axes (a Zipf line is straight)."""
    figure = Figure(figsize=(6, 4.5), layout="constrained")
    axis = figure.subplots()
    axis.plot(np.arange(1, len(counts) + 1), counts, marker=".", markersize=3, linewidth=1)
    if len(counts):
        axis.set_xscale("log")
        axis.set_yscale("log")
    axis.set_xlabel("rank")
    axis.set_ylabel("occurrences")
    axis.set_title("Token rank–frequency")
    return save_figure(figure, path)


def write_plots(stats_dir: Path, tables: dict[str, pd.DataFrame]) -> dict[str, Path]:
    """Every plot of the report, under ``stats_dir/plots``."""
    plots = stats_dir / PLOTS_DIR
    tokens, tags = tables["tokens_per_image"], tables["tags_per_image"]
    return {
        "lab_histograms": plot_lab_histograms(tables["channels"], plots / "lab_histograms.png"),
        "tokens_per_image": plot_count_histogram(
            tokens["tokens"].to_numpy(),
            {"kept": tokens["kept"].to_numpy(), "before truncation": tokens["full"].to_numpy()},
            "tokens per image",
            plots / "tokens_per_image.png",
            cutoff=TOKENS_PER_IMAGE,
        ),
        "tags_per_image": plot_count_histogram(
            tags["tags"].to_numpy(),
            {"images": tags["images"].to_numpy()},
            "tags per image",
            plots / "tags_per_image.png",
        ),
        "token_rank_frequency": plot_rank_frequency(
            tables["token_frequencies"]["count"].to_numpy(), plots / "token_rank_frequency.png"
        ),
    }


def render_markdown(
    title: str, tables: dict[str, pd.DataFrame], figures: dict[str, float | int], bytes_scanned: int
) -> str:
    """The text of ``data_stats.md``; plots are linked by their path relative to it."""
    images, valid = figures["images"], figures["valid_images"]
    parts = [
        f"# Data statistics: {title}\n",
        f"{format_cell(images)} images in {format_cell(len(tables['shards']))} shards, "
        f"{format_cell(valid)} valid ({format_cell(figures['share_valid'], 'share')}); "
        f"{format_cell(bytes_scanned / 1e9)} GB of Lab pixels scanned at "
        f"{format_cell(figures['scan_gb_per_s'])} GB/s.\n",
        "## Images per shard\n",
        _section(
            "shards",
            tables["shards"],
            "Photos per shard, why some could not be used, and (over valid photos) how many are grayscale "
            "and their mean colourfulness.",
        ),
        "## Lab channels\n",
        _section(
            "channel_summary",
            tables["channel_summary"],
            "Pixel distribution of the valid photos per channel, in the stored 8-bit encoding and in Lab "
            "units (L·100/255, a−128, b−128); percentiles are read off the 256-bin histograms.",
        ),
        f"![L, a and b histograms]({PLOTS_DIR}/lab_histograms.png)\n",
        "The full 256-bin histograms are in `channels.parquet`.\n",
        "## Tag tokens\n",
        _section(
            "token_summary",
            tables["token_summary"],
            f"How much of the o200k_base vocabulary the kept tokens (at most {TOKENS_PER_IMAGE} per image, "
            "pad excluded) use, and how often tag text is cut. `never_used_tokens` counts over all ids "
            "0 … 200018; `ordinary_never_used` over the 199,998 ids plain text can encode to (the others are "
            "special or unassigned). `kept_*` and `full_*` describe tokens per image after and before "
            "truncation (p50 is the median).",
            sideways=True,
        ),
        _section(
            "token_frequencies",
            tables["token_frequencies"],
            "The most frequent tokens: `count` = occurrences among the kept tokens, `images` = images "
            "holding the token at least once. Tokens are sub-word pieces of the tags' text: `␠` is the space "
            "that starts a word's piece, `\\xNN` one byte of a character split across tokens.",
            LIST_ROWS,
        ),
        f"![Token rank–frequency]({PLOTS_DIR}/token_rank_frequency.png)\n",
        _section(
            "tokens_per_image",
            tables["tokens_per_image"],
            "Images by number of tokens, kept and before truncation.",
            HISTOGRAM_ROWS,
        ),
        f"![Tokens per image]({PLOTS_DIR}/tokens_per_image.png)\n",
        "## Tags\n",
        _section(
            "tag_summary",
            tables["tag_summary"],
            "Tags as written by the photographers: vocabulary size, the long tail of tags used once, and "
            "tags per image (p50 is the median).",
            sideways=True,
        ),
        _section("top_tags", tables["top_tags"], "The most frequent tags (occurrences).", LIST_ROWS),
        _section("tags_per_image", tables["tags_per_image"], "Images by number of tags.", HISTOGRAM_ROWS),
        f"![Tags per image]({PLOTS_DIR}/tags_per_image.png)\n",
        "## Tokenizers: o200k against whole-tag words\n",
        _section(
            "tokenizers",
            tables["tokenizers"],
            "The two tokenizers over the kept ids (pad excluded): `vocabulary` ids the tokenizer has (o200k: "
            "the 199,998 ordinary ones; words: the dataset's), `never_used`, `singletons` (ids occurring once) "
            "and their share of the ids used, the share of tagged images whose kept ids are all singletons, and "
            "the share of the held-out shard's id occurrences the training shards never hold.",
        ),
    ]
    return "\n".join(parts)


def write_report(
    stats_dir: Path,
    title: str,
    tables: dict[str, pd.DataFrame],
    figures: dict[str, float | int],
    bytes_scanned: int,
) -> tuple[Path, dict[str, Path]]:
    """Write the plots and ``data_stats.md``; return the report's path and the plots' paths by name."""
    plot_paths = write_plots(stats_dir, tables)
    report_path = stats_dir / REPORT_NAME
    atomic_write_text(report_path, render_markdown(title, tables, figures, bytes_scanned))
    return report_path, plot_paths
