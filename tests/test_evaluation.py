"""Evaluation of a tiny checkpoint on a tiny held-out shard, the tag derangement, and the collage layout."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFont

from model.evaluation import (
    BASELINES,
    CONDITIONS,
    MIN_TILE,
    EvaluationResult,
    colour_photos,
    derangement,
    evaluate_checkpoint,
    seeded_subset,
    trained_split,
)
from model.inference import Colorizer
from pipeline.core.color import lab_u8_to_rgb
from pipeline.core.contract import PAD_ID
from pipeline.core.layout import DatasetPaths
from pipeline.core.render import (
    CAPTION_FONT,
    ELLIPSIS,
    CollageLayout,
    CollageRow,
    fit_text,
    preview_markdown,
    render_collage,
)

if TYPE_CHECKING:
    from tests.helpers_model import TinyRun

pytest_plugins = ["tests.helpers_model"]

TILE = 48
COLLAGE_ROWS = 4


@pytest.fixture(scope="module")
def evaluation(tiny_run: TinyRun) -> EvaluationResult:
    return evaluate_checkpoint(
        tiny_run.paths,
        tiny_run.checkpoint,
        tiny_run.holdout_shard,
        n_images=None,
        collage_rows=COLLAGE_ROWS,
        batch_size=5,
    )


def test_evaluation_scores_the_colour_photos_of_the_held_out_shard(
    tiny_run: TinyRun, evaluation: EvaluationResult
) -> None:
    start = tiny_run.holdout_shard * tiny_run.shard_size
    expected_ids = [
        i for i in range(start, start + tiny_run.shard_size) if i not in (tiny_run.invalid_id, tiny_run.grayscale_id)
    ]
    written = json.loads(evaluation.metrics_path.read_text())
    assert evaluation.metrics_path == tiny_run.paths.evaluation / "metrics.json"
    assert written["image_ids"] == expected_ids
    assert written["n_images"] == len(expected_ids)
    assert written["checkpoint"] == str(tiny_run.checkpoint)
    assert set(written["conditions"]) == set(CONDITIONS)
    assert set(written["baselines"]) == set(BASELINES)
    for group in ("conditions", "baselines"):
        for summary in written[group].values():
            assert summary["n_images"] == len(expected_ids)
            assert 0 < summary["ssim"] <= 1 and summary["psnr"] > 0 and summary["ab_error"] > 0
    conditions = written["conditions"]
    assert written["headline"]["tag_gain"] == pytest.approx(
        conditions["shuffled"]["ab_error"] / conditions["tags"]["ab_error"]
    )
    assert evaluation.figures["ab_error/shuffled"] == conditions["shuffled"]["ab_error"]
    assert evaluation.figures["psnr/tags"] == conditions["tags"]["psnr"]
    assert evaluation.figures["n_images"] == len(expected_ids)
    assert all(isinstance(v, int | float) for v in evaluation.figures.values())


def test_baselines_match_direct_computation(tiny_run: TinyRun, evaluation: EvaluationResult) -> None:
    paths = tiny_run.paths
    start = tiny_run.holdout_shard * tiny_run.shard_size
    held = np.load(paths.shard(tiny_run.holdout_shard))[np.array(evaluation.metrics["image_ids"]) - start]
    grey_error = np.abs(held[..., 1:].astype(float) - 128).mean()
    assert evaluation.metrics["baselines"]["grey"]["ab_error"] == pytest.approx(grey_error)
    assert evaluation.metrics["baselines"]["grey"]["colorfulness_generated"] < 0.5
    train = np.load(paths.shard(0))
    mean = evaluation.metrics["train_mean_ab"]
    assert mean["a"] == pytest.approx(train[..., 1].mean() - 128)
    assert mean["b"] == pytest.approx(train[..., 2].mean() - 128)
    assert mean["photos"] == tiny_run.shard_size and mean["shards"] == [0]
    constant = np.rint(np.array([mean["a"], mean["b"]]) + 128)
    expected = np.abs(held[..., 1:].astype(float) - constant).mean()
    assert evaluation.metrics["baselines"]["train_mean"]["ab_error"] == pytest.approx(expected)


def test_collages_have_the_layout_size_and_show_the_photos(tiny_run: TinyRun, evaluation: EvaluationResult) -> None:
    layout = CollageLayout(tile=MIN_TILE, n_rows=COLLAGE_ROWS)
    for path in (evaluation.collage_path, evaluation.best_collage_path):
        with Image.open(path) as image:
            assert image.size == (layout.width, layout.height)
    assert sorted(p.name for p in tiny_run.paths.evaluation.iterdir()) == [
        "metrics.json",
        "result_collage.png",
        "result_collage_best.png",
    ]

    first = evaluation.metrics["image_ids"][0]
    row = first - tiny_run.holdout_shard * tiny_run.shard_size
    lab = np.load(tiny_run.paths.shard(tiny_run.holdout_shard))[row : row + 1]
    tokens = np.load(tiny_run.paths.tokens)[first : first + 1]
    generated = lab.copy()
    generated[..., 1:] = Colorizer.from_checkpoint(tiny_run.checkpoint).predict_ab(lab[..., 0], tokens)
    with Image.open(evaluation.collage_path) as image:
        pixels = np.asarray(image.convert("RGB"))
    for column, expected in ((1, generated[0]), (2, lab[0])):
        tile = Image.fromarray(lab_u8_to_rgb(expected)).resize((MIN_TILE, MIN_TILE), Image.Resampling.LANCZOS)
        x, y = layout.tile_origin(0, column)
        np.testing.assert_array_equal(pixels[y : y + MIN_TILE, x : x + MIN_TILE], np.asarray(tile))


def test_derangement_moves_every_image() -> None:
    for n in (2, 3, 7, 50):
        for seed in range(5):
            permutation = derangement(n, seed)
            assert sorted(permutation.tolist()) == list(range(n))
            assert np.all(permutation != np.arange(n))
    np.testing.assert_array_equal(derangement(20, 3), derangement(20, 3))
    assert not np.array_equal(derangement(20, 3), derangement(20, 4))
    with pytest.raises(ValueError, match="at least 2"):
        derangement(1, 0)


def test_ablation_feeds_true_pad_and_deranged_tags(
    tiny_run: TinyRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = DatasetPaths(tmp_path / "data")
    shutil.copytree(tiny_run.paths.root, paths.root)
    seen: list[np.ndarray] = []
    predict = Colorizer.predict_ab

    def spy(self: Colorizer, l_u8: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        seen.append(np.array(tokens))
        return predict(self, l_u8, tokens)

    monkeypatch.setattr(Colorizer, "predict_ab", spy)
    result = evaluate_checkpoint(paths, tiny_run.checkpoint, tiny_run.holdout_shard, n_images=None, batch_size=100)
    ids = result.metrics["image_ids"]
    true = np.load(paths.tokens)[ids]
    tags, pad, shuffled = seen[:3]  # one batch: the three conditions, then the collages' predictions
    np.testing.assert_array_equal(tags, true)
    assert (pad == PAD_ID).all()
    np.testing.assert_array_equal(shuffled, true[derangement(len(ids), 0)])


def test_shuffled_tags_are_never_an_images_own(tiny_run: TinyRun) -> None:
    start = tiny_run.holdout_shard * tiny_run.shard_size
    tokens = np.load(tiny_run.paths.tokens)[start : start + tiny_run.shard_size]
    shuffled = tokens[derangement(len(tokens), 0)]
    assert not np.any(np.all(shuffled == tokens, axis=1))


def test_selection_is_seeded_and_skips_invalid_and_grey_photos(tiny_run: TinyRun) -> None:
    images = pd.read_parquet(tiny_run.paths.images_table)
    photos = colour_photos(images, [tiny_run.holdout_shard])
    assert tiny_run.invalid_id not in photos["image_id"].tolist()
    assert tiny_run.grayscale_id not in photos["image_id"].tolist()
    assert len(photos) == tiny_run.shard_size - 2
    first, again, other = (seeded_subset(photos, 5, seed)["image_id"].tolist() for seed in (0, 0, 1))
    assert first == again and first != other
    assert len(first) == 5 and first == sorted(first)
    assert len(seeded_subset(photos, None, 0)) == len(photos) == len(seeded_subset(photos, 99, 0))
    with pytest.raises(ValueError, match="positive"):
        seeded_subset(photos, 0, 0)


def test_evaluation_refuses_a_wrong_split(tiny_run: TinyRun) -> None:
    with pytest.raises(ValueError, match="held-out shard 5"):
        evaluate_checkpoint(tiny_run.paths, tiny_run.checkpoint, 5)
    with pytest.raises(ValueError, match="training shards"):
        evaluate_checkpoint(
            tiny_run.paths, tiny_run.checkpoint, tiny_run.holdout_shard, train_shards=[0, tiny_run.holdout_shard]
        )


def make_rows(n: int, size: int = TILE) -> list[CollageRow]:
    rng = np.random.default_rng(0)
    return [
        CollageRow(
            grey_rgb=np.repeat(rng.integers(0, 256, (size, size, 1), dtype=np.uint8), 3, axis=2),
            generated_rgb=rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            original_rgb=rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            caption=f"photo {i}: " + ", ".join(["sunset", "beach", "sea", "clouds"] * 10),
        )
        for i in range(n)
    ]


def test_collage_has_the_layout_size_and_its_tiles(tmp_path: Path) -> None:
    rows = make_rows(3)
    path = render_collage(rows, tmp_path / "out" / "collage.png", tile=TILE)
    layout = CollageLayout(tile=TILE, n_rows=3)
    assert layout.width == 3 * TILE + 4 * layout.margin
    assert layout.height == 2 * layout.margin + layout.header_height + 3 * (TILE + layout.caption_height)
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (layout.width, layout.height)
        pixels = np.asarray(image.convert("RGB"))
    for r, row in enumerate(rows):
        for column, expected in enumerate(row.images):
            x, y = layout.tile_origin(r, column)
            np.testing.assert_array_equal(pixels[y : y + TILE, x : x + TILE], expected)
        x, y = layout.caption_origin(r)
        caption = pixels[y : y + layout.caption_height - layout.margin // 4, x : x + layout.width - 2 * layout.margin]
        assert (caption < 100).any(), f"no caption text under row {r}"
    header = pixels[: layout.margin + layout.header_height]
    assert (header < 100).any() and (header == 255).any()
    assert [p.name for p in path.parent.iterdir()] == ["collage.png"]


def test_preview_is_an_inline_jpeg_of_the_collage(tmp_path: Path) -> None:
    path = render_collage(make_rows(2), tmp_path / "collage.png", tile=TILE)
    markdown = preview_markdown(path, "result collage", width=60)
    match = re.fullmatch(r"!\[result collage\]\(data:image/jpeg;base64,(?P<data>[A-Za-z0-9+/=]+)\)", markdown)
    assert match is not None
    with Image.open(io.BytesIO(base64.b64decode(match["data"]))) as preview, Image.open(path) as collage:
        assert preview.format == "JPEG" and preview.width == 60
        assert preview.height == round(collage.height * 60 / collage.width)


def test_caption_font_draws_accented_tags() -> None:
    font = ImageFont.truetype(CAPTION_FONT, size=20)
    missing = font.getmask("\uffff").getbbox()
    assert font.getmask("ü").getbbox() != missing and font.getlength("münchen") > font.getlength("munchen") * 0.9


def test_trained_split_reads_the_runs_config(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("holdout_shard: 2\nshards: [0, 1]\ndevice: cuda\n")
    assert trained_split(tmp_path) == (2, [0, 1])
    (tmp_path / "config.yaml").write_text("shards: [0, 1]\n")
    with pytest.raises(ValueError, match="no readable holdout_shard and shards"):
        trained_split(tmp_path)


def test_collage_tiles_of_another_size_are_resized(tmp_path: Path) -> None:
    path = render_collage(make_rows(1, size=20), tmp_path / "small.png", tile=TILE)
    layout = CollageLayout(TILE, 1)
    with Image.open(path) as image:
        assert image.size == (layout.width, layout.height)


def test_long_captions_are_truncated_with_an_ellipsis() -> None:
    font = ImageFont.load_default(size=12)
    text = "red, green, blue, " * 20
    fitted = fit_text(text, font, 150)
    assert fitted.endswith(ELLIPSIS)
    assert text.startswith(fitted[:-1])
    assert font.getlength(fitted) <= 150
    assert fit_text("red", font, 150) == "red"


def test_collage_refuses_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one row"):
        render_collage([], tmp_path / "none.png")
    with pytest.raises(ValueError, match="3 columns"):
        render_collage(make_rows(1), tmp_path / "two.png", tile=TILE, columns=("a", "b"))
    assert not list(tmp_path.iterdir())
