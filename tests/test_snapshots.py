"""Snapshot collages and TensorBoard event files written while a run trains, on the tiny dataset of
``tests.helpers`` (shard 0 trained on, shard 1 held out)."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from model.checkpoint import load_checkpoint
from model.collage import MIN_TILE
from model.config import TrainConfig, TrainConfigError, validate_train_config
from model.launch import pipes_metadata
from model.photo_sets import holdout_set
from model.reporting import TENSORBOARD_DIR
from model.snapshots import LATEST_NAME, SNAPSHOT_DIR, SNAPSHOT_ROWS, snapshot_photos
from model.train import TrainResult, train
from pipeline.core.color import lab_u8_to_rgb
from pipeline.core.layout import DatasetPaths
from pipeline.core.render import CollageLayout
from tests.helpers import tiny_config

SIZE = 32
COLUMNS = ("grey input", "generated", "original")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory, write_dataset: Any) -> DatasetPaths:
    return write_dataset(tmp_path_factory.mktemp("snapshots") / "data")


def snapshot_config(paths: DatasetPaths, runs: Path, run_name: str, **changes: Any) -> TrainConfig:
    """A few steps at a high learning rate, so that the generated colours move between snapshots."""
    snapshots = {"max_steps": 5, "lr": 5e-3, "n_critic": 1, "ckpt_every": 5, "keep_checkpoints": 1, "snapshot_every": 2}
    return tiny_config(paths.root, runs, run_name=run_name, prefetch=1, **(snapshots | changes))


@pytest.fixture(scope="module")
def snapshot_run(tiny_data: DatasetPaths, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """Five steps with a snapshot every second one, and TensorBoard required."""
    return train(snapshot_config(tiny_data, tmp_path_factory.mktemp("runs"), "snapshots", tensorboard=True))


def column(snapshot: Path, index: int) -> list[np.ndarray]:
    """Every row's tile in column ``index`` of a snapshot."""
    layout = CollageLayout(tile=MIN_TILE, n_rows=SNAPSHOT_ROWS, n_columns=len(COLUMNS))
    with Image.open(snapshot) as image:
        pixels = np.asarray(image.convert("RGB"))
    tiles = []
    for row in range(SNAPSHOT_ROWS):
        x, y = layout.tile_origin(row, index)
        tiles.append(pixels[y : y + layout.tile, x : x + layout.tile])
    return tiles


def same(expected: Any, actual: Any) -> bool:
    """Equal to the bit, tensors nested in dicts, lists and tuples included."""
    if isinstance(expected, torch.Tensor):
        return isinstance(actual, torch.Tensor) and torch.equal(expected, actual)
    if isinstance(expected, dict):
        return (
            isinstance(actual, dict)
            and expected.keys() == actual.keys()
            and all(same(expected[key], actual[key]) for key in expected)
        )
    if isinstance(expected, list | tuple):
        return type(expected) is type(actual) and len(expected) == len(actual) and all(map(same, expected, actual))
    return expected == actual


def test_snapshots_show_the_same_held_out_photos_as_training_goes_on(
    snapshot_run: TrainResult, tiny_data: DatasetPaths
) -> None:
    snapshots = sorted((snapshot_run.run_dir / SNAPSHOT_DIR).iterdir())
    assert [p.name for p in snapshots] == ["step_000002.png", "step_000004.png", "step_000005.png"], "and the last"
    assert (snapshot_run.run_dir / LATEST_NAME).read_bytes() == snapshots[-1].read_bytes()
    layout = CollageLayout(tile=MIN_TILE, n_rows=SNAPSHOT_ROWS, n_columns=len(COLUMNS))
    for path in snapshots:
        with Image.open(path) as image:
            assert (image.format, image.size) == ("PNG", (layout.width, layout.height))
    first, last = snapshots[0], snapshots[-1]
    for fixed in (COLUMNS.index("grey input"), COLUMNS.index("original")):
        for before, after in zip(column(first, fixed), column(last, fixed), strict=True):
            assert np.array_equal(before, after), f"column {COLUMNS[fixed]}: the same photos in every snapshot"
    generated = COLUMNS.index("generated")
    assert any(
        not np.array_equal(before, after)
        for before, after in zip(column(first, generated), column(last, generated), strict=True)
    ), "the generated colours follow the training"

    photos = snapshot_photos(tiny_data, 1, [0], "o200k")
    evaluated = holdout_set(tiny_data, 1, "o200k")
    assert photos.image_ids.tolist() == evaluated.image_ids[:SNAPSHOT_ROWS].tolist(), "the evaluation's first photos"
    assert all(16 <= i < 32 for i in photos.image_ids), "held out"
    assert [photos.captions[int(i)].rsplit(", ", 1)[-1] for i in photos.image_ids] == [
        f"photo{i}" for i in photos.image_ids
    ]
    originals = lab_u8_to_rgb(photos.read(np.arange(SNAPSHOT_ROWS)))
    for tile, photo in zip(column(last, COLUMNS.index("original")), originals, strict=True):
        assert np.abs(tile.mean(axis=(0, 1)) - photo.mean(axis=(0, 1))).max() < 2, "the photo, enlarged"


def test_without_the_held_out_shard_the_first_training_photos_stand_in(
    tiny_data: DatasetPaths, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "data"
    shutil.copytree(tiny_data.root, root)
    paths = DatasetPaths(root)
    paths.shard(1).unlink()
    with caplog.at_level(logging.INFO, logger="model.snapshots"):
        photos = snapshot_photos(paths, 1, [0], "o200k")
    assert photos.image_ids.tolist() == list(range(SNAPSHOT_ROWS))
    assert "showing the first training photos instead" in caplog.text
    assert photos.read(np.arange(SNAPSHOT_ROWS)).shape == (SNAPSHOT_ROWS, SIZE, SIZE, 3)


def test_the_metadata_shows_the_latest_snapshot_beside_the_curves(snapshot_run: TrainResult) -> None:
    metadata = pipes_metadata(snapshot_run)
    assert metadata["snapshot"] == {"raw_value": str(snapshot_run.run_dir / LATEST_NAME), "type": "path"}
    assert metadata["curves"]["type"] == "path"
    preview = metadata["preview"]["raw_value"]
    assert preview.count("](data:image/jpeg;base64,") == 2
    assert preview.index("![training curves]") < preview.index("![latest snapshot]")


def test_tensorboard_holds_the_logged_metrics_and_the_snapshots(snapshot_run: TrainResult) -> None:
    events = EventAccumulator(str(snapshot_run.run_dir / TENSORBOARD_DIR), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    metrics = pd.read_parquet(snapshot_run.run_dir / "metrics.parquet")
    logged = [name for name in metrics.columns if name != "step"]
    assert {"critic_loss", "generator_loss", "l1", "images_per_s"} <= set(logged)
    assert sorted(events.Tags()["scalars"]) == sorted(logged)
    for name in logged:
        scalars = events.Scalars(name)
        assert [s.step for s in scalars] == metrics["step"].tolist(), name
        assert [s.value for s in scalars] == pytest.approx(metrics[name].tolist(), rel=1e-6), name
    images = events.Images("snapshot")
    assert [image.step for image in images] == [2, 4, 5]
    layout = CollageLayout(tile=MIN_TILE, n_rows=SNAPSHOT_ROWS, n_columns=len(COLUMNS))
    assert (images[-1].width, images[-1].height) == (layout.width, layout.height)


def test_snapshots_and_tensorboard_leave_training_unchanged(tiny_data: DatasetPaths, tmp_path: Path) -> None:
    watched = train(snapshot_config(tiny_data, tmp_path, "watched", max_steps=3, snapshot_every=1, tensorboard=True))
    plain = train(snapshot_config(tiny_data, tmp_path, "plain", max_steps=3, snapshot_every=0, tensorboard=False))
    assert len(list((watched.run_dir / SNAPSHOT_DIR).iterdir())) == 3
    assert not (plain.run_dir / SNAPSHOT_DIR).exists() and not (plain.run_dir / TENSORBOARD_DIR).exists()
    assert "snapshot" not in pipes_metadata(plain)
    expected, actual = load_checkpoint(plain.checkpoint), load_checkpoint(watched.checkpoint)
    for key in ("generator", "critic", "ema", "opt_g", "opt_d", "rng"):
        assert same(expected[key], actual[key]), f"{key}: as without snapshots (no draw from the training RNG)"


def test_tensorboard_is_optional_unless_required(
    tiny_data: DatasetPaths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(TrainConfigError, match=r"^tensorboard: .*not installed"):
        validate_train_config(snapshot_config(tiny_data, tmp_path, "required", tensorboard=True))
    with caplog.at_level(logging.INFO, logger="model.reporting"):
        result = train(snapshot_config(tiny_data, tmp_path, "optional", max_steps=1))
    assert "tensorboard: not installed, so no event files" in caplog.text
    assert not (result.run_dir / TENSORBOARD_DIR).exists()
    assert (result.run_dir / LATEST_NAME).is_file()
