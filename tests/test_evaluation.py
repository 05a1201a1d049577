"""Evaluation of a tiny checkpoint on a tiny held-out shard (its own and another dataset's) and on photo files
under a protocol, the tag derangement, the steering collage, and the collage layout."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageFont

from model import evaluation as evaluation_module
from model.collage import MIN_TILE
from model.data import tag_ids
from model.evaluation import (
    BASELINES,
    CONDITIONS,
    EvaluationResult,
    derangement,
    evaluate,
    evaluate_run,
    trained_split,
)
from model.fid import GaussianMoments, frechet_distance
from model.inference import Colorizer
from model.photo_sets import Protocol, colour_photos, holdout_set, photo_set, seeded_subset
from pipeline.commands.evaluate import main as score_command
from pipeline.core.color import lab_u8_to_rgb
from pipeline.core.contract import PAD_ID
from pipeline.core.fonts import DEJAVU, runs
from pipeline.core.layout import DatasetPaths
from pipeline.core.render import (
    ELLIPSIS,
    CollageLayout,
    CollageRow,
    fit_text,
    preview_markdown,
    render_collage,
)
from tests.helpers import TinyRun

if TYPE_CHECKING:
    from tests.helpers import TinyRun


TILE = 48
COLLAGE_ROWS = 4
STEERING = ("red", "blue, circle")
STEERING_ROWS = 3


@pytest.fixture(scope="module")
def evaluation(tiny_run: TinyRun) -> EvaluationResult:
    """The tiny run scored on its held-out shard; offline with an empty weights cache (tests/conftest.py), so
    FID and LPIPS are unavailable unless a test fakes them."""
    return evaluate_run(
        tiny_run.paths,
        tiny_run.checkpoint.parent,
        n_images=None,
        collage_rows=COLLAGE_ROWS,
        steering=STEERING,
        steering_rows=STEERING_ROWS,
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
    assert all(isinstance(v, int | float) for k, v in evaluation.figures.items() if not k.endswith("_status"))
    assert written["evaluated_on"] == f"held-out shard {tiny_run.holdout_shard:03d} of data"
    for name in (*CONDITIONS, *BASELINES):
        summary = {**written["conditions"], **written["baselines"]}[name]
        assert summary["delta_cf"] == pytest.approx(abs(summary["colorfulness_gap"]))
        assert 0 <= summary["hue_error"] <= 180 and summary["hue_photos"] == len(expected_ids)


def test_fid_and_lpips_are_unavailable_offline_and_say_what_to_do(evaluation: EvaluationResult) -> None:
    status = evaluation.metrics["learned_metrics"]
    assert status["fid"].startswith("unavailable: ") and "weights-inception-2015-12-05-6726825d.pth" in status["fid"]
    assert "TAGCOLOR_OFFLINE" in status["fid"] and "https://github.com/toshas/torch-fidelity/" in status["fid"]
    assert status["lpips"].startswith("unavailable: ") and "alexnet-owt-7be5be79.pth" in status["lpips"]
    assert evaluation.figures["fid_status"] == status["fid"]
    assert not any(key.startswith(("fid/", "lpips/")) for key in evaluation.figures)


def test_fid_is_the_frechet_distance_of_each_set_to_the_originals(
    tiny_run: TinyRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def features(rgb: torch.Tensor) -> torch.Tensor:
        """Per-channel means and spreads: a stand-in for Inception, with the same calling convention."""
        x = rgb.double()
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)

    monkeypatch.setattr(evaluation_module, "inception_features", lambda device: features)
    eval_set = holdout_set(tiny_run.paths, tiny_run.holdout_shard, "o200k", n_images=None)
    result = evaluate(eval_set, tiny_run.checkpoint, tmp_path / "out", train_mean="not needed", batch_size=4)
    assert result.metrics["learned_metrics"]["fid"] == "ok"
    assert "train_mean" not in result.metrics["baselines"] and result.metrics["train_mean_ab"].startswith("unavail")
    lab = eval_set.read(np.arange(len(eval_set)))
    original, grey = GaussianMoments(6), GaussianMoments(6)
    original.add(features(torch.from_numpy(lab_u8_to_rgb(lab)).permute(0, 3, 1, 2)).numpy())
    grey_lab = lab.copy()
    grey_lab[..., 1:] = 128
    grey.add(features(torch.from_numpy(lab_u8_to_rgb(grey_lab)).permute(0, 3, 1, 2)).numpy())
    assert result.metrics["baselines"]["grey"]["fid"] == pytest.approx(frechet_distance(grey, original))
    assert result.figures["fid/tags"] == result.metrics["conditions"]["tags"]["fid"] >= 0


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
    assert mean["photos"] == tiny_run.shard_size and mean["shards"] == [0] and mean["data_root"] == str(paths.root)
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
        "steering_collage.png",
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
    seen: list[np.ndarray] = []
    predict = Colorizer.predict_ab

    def spy(self: Colorizer, l_u8: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        seen.append(np.array(tokens))
        return predict(self, l_u8, tokens)

    monkeypatch.setattr(Colorizer, "predict_ab", spy)
    eval_set = holdout_set(tiny_run.paths, tiny_run.holdout_shard, "o200k", n_images=None)
    result = evaluate(eval_set, tiny_run.checkpoint, tmp_path, train_mean="not needed", batch_size=100)
    ids = result.metrics["image_ids"]
    true = np.load(tiny_run.paths.tokens)[ids]
    tags, pad, shuffled = seen[:3]  # one batch: the three conditions, then the collages' predictions
    np.testing.assert_array_equal(tags, true)
    assert (pad == PAD_ID).all()
    np.testing.assert_array_equal(shuffled, true[derangement(len(ids), 0)])


def test_steering_collage_shows_own_no_and_each_alternative_tag_set(
    tiny_run: TinyRun, evaluation: EvaluationResult
) -> None:
    columns = 3 + len(STEERING) + 1  # grey input, own tags, no tags, the alternatives, original
    layout = CollageLayout(tile=MIN_TILE, n_rows=STEERING_ROWS, n_columns=columns)
    with Image.open(evaluation.steering_collage_path) as image:
        assert image.size == (layout.width, layout.height)
        pixels = np.asarray(image.convert("RGB"))
    first = evaluation.metrics["image_ids"][0]
    lab = np.load(tiny_run.paths.shard(tiny_run.holdout_shard))[first - tiny_run.holdout_shard * tiny_run.shard_size]
    colorizer = Colorizer.from_checkpoint(tiny_run.checkpoint)
    red = tag_ids(["red"], colorizer.index)
    for column, tokens in ((2, np.full(20, PAD_ID)), (3, red)):
        expected = lab[None].copy()
        expected[..., 1:] = colorizer.predict_ab(lab[None, ..., 0], tokens[None].astype(np.int32))
        tile = Image.fromarray(lab_u8_to_rgb(expected[0])).resize((MIN_TILE, MIN_TILE), Image.Resampling.LANCZOS)
        x, y = layout.tile_origin(0, column)
        np.testing.assert_array_equal(pixels[y : y + MIN_TILE, x : x + MIN_TILE], np.asarray(tile))


def test_a_run_scores_another_datasets_held_out_shard(
    tiny_run: TinyRun, tmp_path: Path, write_dataset: Callable[..., DatasetPaths]
) -> None:
    other = write_dataset(tmp_path / "other", photo_offset=3)
    result = evaluate_run(other, tiny_run.checkpoint.parent, n_images=None, batch_size=8)
    assert result.metrics_path == other.evaluation / "metrics.json"
    assert result.metrics["evaluated_on"] == f"held-out shard {tiny_run.holdout_shard:03d} of other"
    held = np.load(other.shard(tiny_run.holdout_shard))
    ids = result.metrics["image_ids"]
    grey = np.abs(held[np.array(ids) - tiny_run.holdout_shard * tiny_run.shard_size][..., 1:].astype(float) - 128)
    assert result.metrics["baselines"]["grey"]["ab_error"] == pytest.approx(grey.mean())
    assert result.metrics["train_mean_ab"]["data_root"] == str(tiny_run.paths.root)  # the run's training photos


def test_photo_files_are_scored_in_file_name_order_under_the_protocol(tiny_run: TinyRun, tmp_path: Path) -> None:
    paths = tiny_run.paths
    ids = np.arange(tiny_run.holdout_shard * tiny_run.shard_size, (tiny_run.holdout_shard + 1) * tiny_run.shard_size)
    files = {}
    for k, image_id in enumerate(ids):
        rgb = np.zeros((30, 50, 3), dtype=np.uint8)  # 50 wide: the centre crop keeps columns 10 … 39
        rgb[:, 10:40] = (40 + 12 * k, 120, 220 - 12 * k)
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format="PNG")
        files[int(image_id)] = buffer.getvalue()
    # Class folders as in ImageNet: the order is by file name, not by path.
    names = pd.DataFrame(
        {"image_id": ids, "name": [f"n{9 - k:02d}/ILSVRC2012_val_{k + 1:08d}.PNG" for k in range(len(ids))]}
    )
    protocol = Protocol(crop="center", size=24, first_n=len(ids) - 1)
    eval_set = photo_set(paths, names.iloc[::-1], files.__getitem__, "o200k", protocol)
    assert eval_set.image_ids.tolist() == ids[:-1].tolist()
    lab = eval_set.read(np.arange(2))
    assert lab.shape == (2, 24, 24, 3)
    assert np.ptp(lab[..., 1:].astype(int), axis=(1, 2)).max() <= 2  # only the centred colour band is left
    result = evaluate(eval_set, tiny_run.checkpoint, tmp_path, train_mean="", batch_size=4, collage_rows=COLLAGE_ROWS)
    assert result.metrics["protocol"] == {"split": "all", "crop": "center", "size": 24, "first_n": len(ids) - 1}
    assert result.metrics["n_images"] == len(ids) - 1
    layout = CollageLayout(MIN_TILE, COLLAGE_ROWS)
    with Image.open(result.collage_path) as collage:
        assert collage.size == (layout.width, layout.height)
    with pytest.raises(ValueError, match="crop"):
        Protocol(crop="top")


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


def test_evaluation_refuses_a_wrong_split(tiny_run: TinyRun, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="held-out shard 5"):
        holdout_set(tiny_run.paths, 5, "o200k")
    eval_set = holdout_set(tiny_run.paths, tiny_run.holdout_shard, "o200k", n_images=None)
    with pytest.raises(ValueError, match="must be positive"):
        evaluate(eval_set, tiny_run.checkpoint, tmp_path, train_mean="", steering_rows=0)


def make_rows(n: int, size: int = TILE) -> list[CollageRow]:
    rng = np.random.default_rng(0)
    return [
        CollageRow(
            images=(
                np.repeat(rng.integers(0, 256, (size, size, 1), dtype=np.uint8), 3, axis=2),
                rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            ),
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
    assert runs("münchen, Ελλάδα, Москва") == [("münchen, Ελλάδα, Москва", DEJAVU)]


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
    with pytest.raises(ValueError, match="one image per column"):
        render_collage(make_rows(1), tmp_path / "two.png", tile=TILE, columns=("a", "b"))
    assert not list(tmp_path.iterdir())


def test_the_command_line_scores_any_run_and_says_what_is_wrong_in_one_line(
    tiny_run: TinyRun,
    tmp_path: Path,
    write_dataset: Callable[..., DatasetPaths],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``python -m pipeline.commands.evaluate``, the asset's entry point without Dagster, on a run directory
    outside the data root."""
    write_dataset(tmp_path / "sample")  # the data root holds a dataset of a registered name
    monkeypatch.setenv("TAGCOLOR_DATA_DIR", str(tmp_path))
    run_dir = tiny_run.checkpoint.parent
    score_command(["sample", "--run", str(run_dir), "--n-images", "8", "--collage-rows", "2", "--device", "cpu"])
    printed = capsys.readouterr().out
    assert re.search(r"^ab_error/tags: \d", printed, re.MULTILINE) and "metrics: " in printed
    assert json.loads((tmp_path / "sample" / "evaluation" / "metrics.json").read_text())["n_images"] == 8
    damaged = tmp_path / "damaged"
    shutil.copytree(run_dir, damaged)
    (damaged / "latest.pt").write_bytes(b"cut short")
    with pytest.raises(SystemExit) as exit_code:
        score_command(["sample", "--run", str(damaged), "--device", "cpu"])
    error = capsys.readouterr().err.strip()
    assert exit_code.value.code == 2 and len(error.splitlines()) == 1
    assert "damaged/latest.pt: not a readable checkpoint" in error
