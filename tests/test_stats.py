"""Data statistics on a hand-built dataset whose every figure is derived by hand below."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tiktoken

import pipeline.stats as stats
from pipeline.core.contract import INVALID_REASONS, O200K_VOCAB_SIZE, PAD_ID, TOKENS_PER_IMAGE
from pipeline.core.layout import DatasetLayout, DatasetPaths
from pipeline.stats import (
    channel_histograms,
    compute_data_stats,
    histogram_summary,
    shard_channel_histograms,
)
from tests.helpers import PNG_MAGIC, assert_report_matches_tables

REPORT_TABLES = {
    "tokenizers.parquet",
    "shards.parquet",
    "channel_summary.parquet",
    "token_summary.parquet",
    "token_frequencies.parquet",
    "tokens_per_image.parquet",
    "tag_summary.parquet",
    "top_tags.parquet",
    "tags_per_image.parquet",
}
TEXTS = {5: "\n", 7: " sea|side"}


def decode(token: int) -> str:
    return TEXTS.get(token, f"t{token}")


def _image(top: tuple[int, int, int], bottom: tuple[int, int, int]) -> np.ndarray:
    """A 4×4 Lab image: rows 0–1 one colour, rows 2–3 another."""
    image = np.empty((4, 4, 3), dtype=np.uint8)
    image[:2], image[2:] = top, bottom
    return image


def build_dataset(root: Path) -> DatasetPaths:
    """Shards of 3 and 2 images (image 1 missing), tokens with pads and truncation, tags with singletons."""
    paths = DatasetPaths(root)
    paths.shards.mkdir(parents=True)
    paths.images_table.mkdir()
    images = [
        _image((200, 130, 120), (50, 128, 140)),
        np.zeros((4, 4, 3), dtype=np.uint8),
        _image((255, 0, 255), (255, 0, 255)),
        _image((0, 128, 128), (0, 128, 128)),
        _image((50, 140, 120), (50, 140, 120)),
    ]
    np.save(paths.shard(0), np.stack(images[:3]))
    np.save(paths.shard(1), np.stack(images[3:]))
    table = pd.DataFrame(
        {
            "image_id": np.arange(5, dtype=np.int64),
            "shard": np.array([0, 0, 0, 1, 1], dtype=np.int32),
            "row": np.array([0, 1, 2, 0, 1], dtype=np.int32),
            "valid": [True, False, True, True, True],
            "reason": ["", "missing", "", "", ""],
            "width": np.full(5, 320, dtype=np.int32),
            "height": np.full(5, 240, dtype=np.int32),
            "is_grayscale": [False, False, False, True, False],
            "colorfulness": np.array([10.0, 0.0, 30.0, 0.0, 8.0], dtype=np.float32),
            "n_tags": np.array([2, 0, 3, 1, 2], dtype=np.int32),
            "n_tokens": np.array([3, 0, 25, 1, 20], dtype=np.int32),
        }
    )
    table.iloc[3:].to_parquet(paths.shard_rows(1), index=False)
    table.iloc[:3].to_parquet(paths.shard_rows(0), index=False)
    tokens = np.full((5, TOKENS_PER_IMAGE), PAD_ID, dtype=np.int32)
    tokens[0, :3] = [5, 7, 5]
    tokens[2] = np.arange(1, 21)
    tokens[3, 0] = 5
    tokens[4] = 7
    np.save(paths.tokens, tokens)
    pd.DataFrame(
        {
            "image_id": np.arange(5, dtype=np.int64),
            "tags": [["sky", "sea"], [], ["sky", "sunset", "2008"], ["sky"], ["sea", "beach"]],
            "n_tags": np.array([2, 0, 3, 1, 2], dtype=np.int32),
            "n_tokens": np.array([3, 0, 25, 1, 20], dtype=np.int32),
        }
    ).to_parquet(paths.tags_table, index=False)
    return paths


@pytest.fixture
def dataset(tmp_path: Path) -> DatasetPaths:
    return build_dataset(tmp_path / "tiny")


@pytest.fixture
def computed(dataset: DatasetPaths):
    return compute_data_stats(dataset, 2, decode)


def _counts(pairs: dict[int, int]) -> np.ndarray:
    out = np.zeros(256, dtype=np.int64)
    for value, count in pairs.items():
        out[value] = count
    return out


def test_channel_histograms_count_only_the_given_rows(dataset: DatasetPaths) -> None:
    hist = channel_histograms(dataset.shard(0), np.array([0, 2]))
    assert hist.shape == (3, 256) and hist.dtype == np.int64
    np.testing.assert_array_equal(hist[0], _counts({200: 8, 50: 8, 255: 16}))
    np.testing.assert_array_equal(hist[1], _counts({130: 8, 128: 8, 0: 16}))
    np.testing.assert_array_equal(hist[2], _counts({120: 8, 140: 8, 255: 16}))


@pytest.mark.parametrize("size", [3, 224])
def test_channel_histograms_match_a_plain_count_for_any_window(tmp_path: Path, size: int) -> None:
    """Odd pixel counts (3×3), odd row lengths and windows of several MiB (224×224) all count alike."""
    shard = np.random.default_rng(size).integers(0, 256, (30, size, size, 3), dtype=np.uint8)
    np.save(tmp_path / "shard.npy", shard)
    rows = np.array([0, 2, 3, 4, 6, *range(9, 30)])
    expected = np.stack([np.bincount(shard[rows][..., c].ravel(), minlength=256) for c in range(3)])
    for chunk in (1, 2, 256):
        np.testing.assert_array_equal(channel_histograms(tmp_path / "shard.npy", rows, chunk=chunk), expected)


def test_windows_stay_below_the_exact_float32_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A window never holds more pixels than calcHist counts exactly; the cap cuts windows, not counts."""
    shard = np.full((7, 4, 4, 3), 9, dtype=np.uint8)
    np.save(tmp_path / "shard.npy", shard)
    seen: list[int] = []
    calc_hist = stats.cv2.calcHist
    monkeypatch.setattr(stats, "_EXACT_PIXELS", 3 * 16)

    def spy(images: list[np.ndarray], *args: object) -> np.ndarray:
        seen.append(images[0].shape[0])
        return calc_hist(images, *args)

    monkeypatch.setattr(stats.cv2, "calcHist", spy)
    hist = channel_histograms(tmp_path / "shard.npy", np.arange(7))
    assert max(seen) == 3 * 4, "at most 3 images of 4×4 pixels per call"
    np.testing.assert_array_equal(hist[:, 9], 7 * 16)
    np.save(tmp_path / "huge.npy", np.zeros((1, 8, 8, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="too large to count exactly"):
        channel_histograms(tmp_path / "huge.npy", np.array([0]))


def test_channel_histograms_refuse_bad_input(tmp_path: Path) -> None:
    np.save(tmp_path / "lab.npy", np.zeros((2, 4, 4, 3), dtype=np.uint8))
    np.save(tmp_path / "float.npy", np.zeros((2, 4, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="valid rows"):
        channel_histograms(tmp_path / "lab.npy", np.array([0, 2]))
    with pytest.raises(ValueError, match="uint8"):
        channel_histograms(tmp_path / "float.npy", np.array([0]))
    np.testing.assert_array_equal(channel_histograms(tmp_path / "lab.npy", np.array([], dtype=np.int64)), 0)


def test_worker_processes_give_the_same_sums(dataset: DatasetPaths) -> None:
    shards = [dataset.shard(0), dataset.shard(1)]
    rows = [np.array([0, 2]), np.array([0, 1])]
    serial = shard_channel_histograms(shards, rows, workers=1)
    np.testing.assert_array_equal(shard_channel_histograms(shards, rows, workers=2), serial)
    assert serial.sum() == 3 * 4 * 16


def test_histogram_summary_by_hand() -> None:
    summary = histogram_summary(np.array([0, 2, 0, 1, 1]))
    assert summary["mean"] == 2.25
    assert summary["std"] == pytest.approx(math.sqrt(6.75 / 4))
    assert (summary["min"], summary["p1"], summary["p50"], summary["p75"], summary["p99"], summary["max"]) == (
        1,
        1,
        1,
        3,
        4,
        4,
    )
    assert all(math.isnan(v) for v in histogram_summary(np.zeros(3, dtype=np.int64)).values())


def test_channel_tables_by_hand(computed, dataset: DatasetPaths) -> None:
    channels = pd.read_parquet(dataset.stats / "channels.parquet")
    np.testing.assert_array_equal(channels["value"], np.arange(256))
    np.testing.assert_array_equal(channels["L"], _counts({0: 16, 50: 24, 200: 8, 255: 16}))
    np.testing.assert_array_equal(channels["a"], _counts({0: 16, 128: 24, 130: 8, 140: 16}))
    np.testing.assert_array_equal(channels["b"], _counts({120: 24, 128: 16, 140: 8, 255: 16}))
    summary = pd.read_parquet(dataset.stats / "channel_summary.parquet").set_index(["channel", "units"])
    assert (summary["pixels"] == 64).all()
    encoded, lab = summary.xs("encoded", level="units"), summary.xs("Lab", level="units")
    assert encoded.loc["L", ["mean", "p1", "p5", "p25", "p50", "p75", "p95", "p99"]].tolist() == [
        107.5,
        0,
        0,
        0,
        50,
        200,
        255,
        255,
    ]
    assert encoded.loc["L", "std"] == pytest.approx(math.sqrt(10637.5))
    assert encoded.loc["a", ["mean", "p25", "p50", "p75", "p95"]].tolist() == [99.25, 0, 128, 130, 140]
    assert encoded.loc["b", ["mean", "p25", "p50", "p75", "p99"]].tolist() == [158.25, 120, 128, 140, 255]
    assert lab.loc["L", "mean"] == pytest.approx(107.5 * 100 / 255)
    assert lab.loc["L", "std"] == pytest.approx(math.sqrt(10637.5) * 100 / 255)
    assert lab.loc["a", ["mean", "p50", "p75", "p95"]].tolist() == [-28.75, 0, 2, 12]
    assert lab.loc["b", ["mean", "p25", "p99"]].tolist() == [30.25, -8, 127]


def test_shard_table_by_hand(computed, dataset: DatasetPaths) -> None:
    shards = pd.read_parquet(dataset.stats / "shards.parquet")
    assert shards.to_dict(orient="list") == {
        "shard": [0, 1],
        "images": [3, 2],
        "valid": [2, 2],
        "invalid": [1, 0],
        **{f"invalid_{reason}": [int(reason == "missing"), 0] for reason in INVALID_REASONS},
        "grayscale": [0, 1],
        "mean_colorfulness": [20.0, 4.0],
    }


def test_token_tables_by_hand(computed, dataset: DatasetPaths) -> None:
    frequencies = pd.read_parquet(dataset.stats / "token_frequencies.parquet")
    rest = [i for i in range(1, 21) if i not in (5, 7)]
    assert frequencies["id"].tolist() == [7, 5, *rest]
    assert frequencies["count"].tolist() == [22, 4] + [1] * 18
    assert frequencies["images"].tolist() == [3, 3] + [1] * 18
    assert frequencies["text"].tolist() == [" sea|side", "\n", *(f"t{i}" for i in rest)]
    (summary,) = pd.read_parquet(dataset.stats / "token_summary.parquet").to_dict(orient="records")
    assert summary["vocab_size_with_pad"] == 200_020
    assert summary["distinct_tokens"] == 20
    assert summary["never_used_tokens"] == O200K_VOCAB_SIZE - 20 == 199_999
    assert summary["share_never_used"] == pytest.approx(199_999 / 200_019)
    assert summary["ordinary_never_used"] == 199_998 - 20, "every token of the hand-built set is ordinary"
    assert summary["share_ordinary_never_used"] == pytest.approx(199_978 / 199_998)
    assert summary["token_occurrences"] == 3 + 20 + 1 + 20
    assert (summary["truncated_images"], summary["share_truncated"]) == (1, 0.2)
    assert (summary["kept_mean"], summary["kept_p50"], summary["kept_max"]) == (8.8, 3, 20)
    assert (summary["full_mean"], summary["full_p50"], summary["full_max"]) == (9.8, 3, 25)
    per_image = pd.read_parquet(dataset.stats / "tokens_per_image.parquet")
    assert per_image["tokens"].tolist() == list(range(26))
    assert dict(zip(per_image["tokens"], per_image["kept"], strict=True)) == {
        t: {0: 1, 1: 1, 3: 1, 20: 2}.get(t, 0) for t in range(26)
    }
    assert dict(zip(per_image["tokens"], per_image["full"], strict=True)) == {
        t: {0: 1, 1: 1, 3: 1, 20: 1, 25: 1}.get(t, 0) for t in range(26)
    }


def test_tag_tables_by_hand(computed, dataset: DatasetPaths) -> None:
    (summary,) = pd.read_parquet(dataset.stats / "tag_summary.parquet").to_dict(orient="records")
    assert {k: summary[k] for k in ("images", "tag_occurrences", "distinct_tags", "singleton_tags")} == {
        "images": 5,
        "tag_occurrences": 8,
        "distinct_tags": 5,
        "singleton_tags": 3,
    }
    assert (summary["share_singleton"], summary["images_without_tags"], summary["share_without_tags"]) == (
        0.6,
        1,
        0.2,
    )
    assert (summary["per_image_mean"], summary["per_image_p50"], summary["per_image_max"]) == (1.6, 2, 3)
    top = pd.read_parquet(dataset.stats / "top_tags.parquet")
    assert top.to_dict(orient="list") == {"tag": ["sky", "sea", "2008", "beach", "sunset"], "count": [3, 2, 1, 1, 1]}
    per_image = pd.read_parquet(dataset.stats / "tags_per_image.parquet")
    assert per_image.to_dict(orient="list") == {"tags": [0, 1, 2, 3], "images": [1, 1, 2, 1]}


def test_figures_and_metadata_tables_by_hand(computed) -> None:
    figures = computed.figures
    assert {k: figures[k] for k in ("images", "valid_images", "invalid_images", "grayscale_images")} == {
        "images": 5,
        "valid_images": 4,
        "invalid_images": 1,
        "grayscale_images": 1,
    }
    assert figures["share_valid"] == 0.8
    assert figures["mean_colorfulness"] == 12.0
    assert (figures["a_mean"], figures["b_mean"]) == (-28.75, 30.25)
    assert figures["L_mean"] == pytest.approx(107.5 * 100 / 255)
    assert figures["distinct_tokens"] == 20
    assert figures["share_tokens_never_used"] == pytest.approx(199_999 / 200_019)
    assert (figures["share_images_truncated"], figures["mean_tokens_per_image"]) == (0.2, 8.8)
    assert (figures["distinct_tags"], figures["share_singleton_tags"], figures["images_without_tags"]) == (5, 0.6, 1)
    assert figures["mean_tags_per_image"] == 1.6
    assert all(isinstance(v, int | float) for v in figures.values())
    assert computed.bytes_scanned == 4 * 4 * 4 * 3
    assert set(computed.tables) == {
        "channel_summary",
        "shards",
        "token_summary",
        "tag_summary",
        "top_tokens",
        "top_tags",
        "tokenizers",
    }
    assert computed.tables["top_tokens"]["id"].tolist()[:2] == [7, 5]


def test_report_agrees_with_the_tables(computed, dataset: DatasetPaths) -> None:
    assert computed.report_path == dataset.stats / "data_stats.md"
    assert assert_report_matches_tables(dataset.stats) == REPORT_TABLES
    text = computed.report_path.read_text()
    assert "| distinct_tokens | 20 |" in text
    assert '| 7 | " sea\\u007cside" | 22 | 3 |' in text


@pytest.mark.parametrize(
    ("shown", "wrong"),
    [("| distinct_tokens | 20 |", "| distinct_tokens | 21 |"), ("| 0 | 3 | 2 | 1 |", "| 0 | 3 | 1 | 1 |")],
)
def test_report_check_catches_a_wrong_number(computed, dataset: DatasetPaths, shown: str, wrong: str) -> None:
    text = computed.report_path.read_text()
    assert shown in text
    computed.report_path.write_text(text.replace(shown, wrong))
    with pytest.raises(AssertionError):
        assert_report_matches_tables(dataset.stats)


def test_plots_are_pngs(computed, dataset: DatasetPaths) -> None:
    assert set(computed.plot_paths) == {"lab_histograms", "tokens_per_image", "tags_per_image", "token_rank_frequency"}
    for path in computed.plot_paths.values():
        assert path.parent == dataset.stats / "plots"
        assert path.read_bytes().startswith(PNG_MAGIC)
    leftovers = [p.name for p in dataset.stats.rglob("*") if ".tmp" in p.name]
    assert leftovers == []


def test_preview_embeds_every_plot_and_keeps_the_whole_report(computed) -> None:
    metadata = computed.metadata
    preview, report = metadata["preview"], computed.report_path.read_text()
    assert report.count("](plots/") == len(computed.plot_paths) == preview.count("](data:image/jpeg;base64,")
    assert "](plots/" not in preview
    for heading in re.findall(r"^#+ .*$", report, flags=re.MULTILINE):
        assert heading in preview  # nothing cut off
    assert next(iter(metadata)) == "preview"
    assert {metadata[f"plot/{name}"] for name in computed.plot_paths} == set(computed.plot_paths.values())


def test_images_table_must_cover_exactly_the_shards(dataset: DatasetPaths) -> None:
    with pytest.raises(ValueError, match=r"lacks rows of shard\(s\) \[2\]"):
        compute_data_stats(dataset, 3, decode)
    with pytest.raises(ValueError, match=r"unexpected shard\(s\) \[1\]"):
        compute_data_stats(dataset, 1, decode)
    assert not dataset.stats.exists()


def test_report_round_trips_real_token_texts(
    dataset: DatasetPaths, vocabulary_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """o200k's punctuation tokens (ids 1 … 20 include ``"``) survive the Markdown table unchanged."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(vocabulary_dir))
    encoding = tiktoken.get_encoding("o200k_base")
    compute_data_stats(dataset, 2, lambda i: encoding.decode([i]), workers=2)
    frequencies = pd.read_parquet(dataset.stats / "token_frequencies.parquet")
    assert frequencies["text"].tolist() == [encoding.decode([i]) for i in frequencies["id"]]
    assert '"' in frequencies["text"].tolist()
    assert assert_report_matches_tables(dataset.stats) == REPORT_TABLES


def test_the_tokenizers_side_by_side_by_hand(tmp_path: Path) -> None:
    """o200k ids 5, 7, 7, 9 and words 1, 2, 2, 2 over four photos in two shards, the second held out."""
    paths = DatasetPaths(tmp_path)
    tokens = np.full((4, TOKENS_PER_IMAGE), PAD_ID, np.int32)
    tokens[0, :2], tokens[1, 0], tokens[2, 0] = [5, 7], 7, 9
    words = np.zeros((4, 8), np.int32)
    words[0, :2], words[1, 0], words[2, 0] = [1, 2], 2, 2
    np.save(paths.tokens, tokens)
    np.save(paths.tag_words, words)
    paths.words.write_text(json.dumps(["", "a", "b"]))
    table = stats.tokenizer_table(DatasetLayout(n_images=4, shard_size=2, paths=paths)).set_index("tokenizer")
    assert table.loc["o200k"].to_dict() == {
        "per_image": 20, "vocabulary": 199_998, "used": 3, "never_used": 199_995, "singletons": 2,
        "share_singletons": 2 / 3, "share_images_all_singletons": 1 / 3, "share_held_out_unseen": 1.0,
    }  # fmt: skip
    assert table.loc["words"].to_dict() == {
        "per_image": 8, "vocabulary": 2, "used": 2, "never_used": 0, "singletons": 1,
        "share_singletons": 0.5, "share_images_all_singletons": 0.0, "share_held_out_unseen": 0.0,
    }  # fmt: skip


def test_the_held_out_shard_is_the_real_one_when_photos_do_not_divide_into_equal_shards(tmp_path: Path) -> None:
    """50 photos in shards of 20: the held-out shard 2 holds photos 40 … 49, not the last ⌈50 / 3⌉ = 17."""
    paths = DatasetPaths(tmp_path)
    tokens = np.full((50, TOKENS_PER_IMAGE), PAD_ID, np.int32)
    tokens[:40, 0], tokens[40:, 0] = 5, 9  # the training shards hold token 5 only, the held-out shard token 9 only
    np.save(paths.tokens, tokens)
    table = stats.tokenizer_table(DatasetLayout(n_images=50, shard_size=20, paths=paths)).set_index("tokenizer")
    assert table.loc["o200k", "share_held_out_unseen"] == 1.0
    recorded = DatasetLayout(n_images=50, shard_size=20, paths=paths, recorded_holdout=1)  # split.json: shard 1
    assert stats.tokenizer_table(recorded).set_index("tokenizer").loc["o200k", "share_held_out_unseen"] == 0.0
