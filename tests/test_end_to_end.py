"""The README's demo and a folder of one's own photos, run as a user would, through Dagster's CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from docs.refresh import BEGIN, END
from model.collage import MIN_TILE
from pipeline.core.render import CollageLayout
from tests.helpers import REPO_ROOT, SampleInstance, assert_report_matches_tables, folder_of_scenes, scene


@pytest.mark.slow
def test_sample_graph_end_to_end(sample_instance: SampleInstance, tmp_path: Path) -> None:
    data = sample_instance.data
    root = data / "sample"
    assert sorted(p.name for p in (root / "raw").glob("*.zip")) == ["images0.zip", "tags.zip"]
    for shard in (0, 1):
        array = np.load(root / "shards" / f"lab_{shard:03d}.npy", mmap_mode="r")
        assert array.shape == (256, 224, 224, 3) and array.dtype == np.uint8
        assert 20 < array[..., 0].mean() < 235 and array[..., 1:].std() > 1
    images = pd.read_parquet(root / "images.parquet").sort_values("image_id")
    assert images["image_id"].tolist() == list(range(512)) and images["valid"].all()
    tokens = np.load(root / "tokens.npy")
    assert tokens.shape == (512, 20) and tokens.dtype == np.int32

    assert_report_matches_tables(root / "stats")

    run = root / "runs" / "ci"
    assert (run / "latest.pt").is_file() and (run / "config.yaml").is_file()
    assert len(pd.read_parquet(run / "metrics.parquet")) > 0

    metrics = json.loads((root / "evaluation" / "metrics.json").read_text())
    conditions = metrics["conditions"]
    assert set(conditions) == {"tags", "pad", "shuffled"}
    assert set(metrics["baselines"]) == {"grey", "train_mean"}
    for values in conditions.values():
        assert math.isfinite(values["ab_error"]) and values["ab_error"] >= 0
        assert 0 < values["ssim"] <= 1
    assert set(metrics["headline"]) == {"tag_gain", "pad_gain", "train_mean_gain", "grey_gain"}
    assert all(math.isfinite(gain) and gain > 0 for gain in metrics["headline"].values())
    assert all(values["ab_error"] > 0 for values in metrics["baselines"].values())
    layout = CollageLayout(tile=max(224, MIN_TILE), n_rows=8)  # tiles at the shards' size, eight rows
    with Image.open(root / "evaluation" / "result_collage.png") as collage:
        assert collage.size == (layout.width, layout.height)
    assert (sample_instance.home / "dagster.yaml").is_file(), "make installs the instance settings"


@pytest.mark.slow
def test_make_docs_copies_the_demo_output(sample_instance: SampleInstance, tmp_path: Path) -> None:
    """`make docs` puts the demo's collages and figures into the README, read from the demo's metrics.json."""
    evaluation = sample_instance.data / "sample" / "evaluation"
    readme = tmp_path / "README.md"
    readme.write_text(f"# before\n\n{BEGIN}\nold figures\n{END}\n\nafter\n")
    command = ["make", "-o", str(Path(sys.prefix) / "bin" / "dg"), "docs", f"VENV={sys.prefix}"]
    command += [f"DATA={sample_instance.data}", f"DOCS={tmp_path / 'docs'}", f"README={readme}"]
    done = subprocess.run(command, cwd=REPO_ROOT, env=sample_instance.env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "docs" / "sample_collage.png").read_bytes() == (evaluation / "result_collage.png").read_bytes()
    with (
        Image.open(tmp_path / "docs" / "sample_steering.jpg") as jpeg,
        Image.open(evaluation / "steering_collage.png") as png,
    ):
        assert jpeg.size == png.size
    metrics = json.loads((evaluation / "metrics.json").read_text())
    text = readme.read_text()
    assert text.startswith("# before") and text.endswith("after\n") and "old figures" not in text
    tags_row = next(line for line in text.splitlines() if line.startswith("| tags |"))
    assert f"{metrics['conditions']['tags']['ab_error']:.2f}" in tags_row
    assert f"on the {metrics['n_images']} photos" in text


@pytest.mark.slow
def test_a_folder_of_photos_through_the_whole_graph(tmp_path: Path, vocabulary_dir: Path) -> None:
    """30 photos with the defaults: archives → … → evaluation; then photos are added and the split holds."""
    photos, datasets, data = tmp_path / "photos", tmp_path / "datasets", tmp_path / "data"
    folder_of_scenes(photos, 30)
    datasets.mkdir()
    (datasets / "my-photos.yaml").write_text("name: my-photos\nkind: folder\npath: /nowhere\n")
    env = os.environ | {
        "TIKTOKEN_CACHE_DIR": str(vocabulary_dir),
        "DAGSTER_HOME": str(tmp_path / "home"),
        "TAGCOLOR_DATA_DIR": str(data),
        "TAGCOLOR_DATASETS_DIR": str(datasets),
        "TAGCOLOR_MY_PHOTOS_PATH": str(photos),  # the variable wins over the file's path
    }
    (tmp_path / "home").mkdir()

    def materialize(*selection: str) -> None:
        command = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "pipeline.defs.definitions"]
        done = subprocess.run(
            [*command, "--select", *selection], cwd=REPO_ROOT, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]

    materialize("my-photos/archives", "--partition", "folder")
    materialize("my-photos/tags_archive")
    materialize("my-photos/lab_shards", "--partition-range", "000...004")
    for asset in ("tag_tokens", "data_stats", "colorizer", "evaluation"):
        materialize(f"my-photos/{asset}")
    root = data / "my-photos"
    assert json.loads((root / "split.json").read_text()) == {"shard_size": 6, "holdout_shard": 4}
    metrics = json.loads((root / "evaluation" / "metrics.json").read_text())
    assert (metrics["holdout_shard"], metrics["n_images"]) == (4, 6)
    assert metrics["train_mean_ab"]["shards"] == [0, 1, 2, 3]
    assert (root / "runs" / "folder" / "latest.pt").is_file(), "the folder kind's preset names the run"

    (photos / "later").mkdir()
    for k in range(30, 36):
        (photos / "later" / f"photo{k}.jpg").write_bytes(scene(k))
    materialize("my-photos/archives", "--partition", "folder")
    materialize("my-photos/lab_shards", "--partition", "005")
    materialize("my-photos/tag_tokens")
    materialize("my-photos/data_stats")
    images = pd.read_parquet(root / "images.parquet").sort_values("image_id")
    assert images["image_id"].tolist() == list(range(36)) and images["valid"].all()
    assert json.loads((root / "split.json").read_text())["holdout_shard"] == 4, "added photos never move the split"
    assert np.load(root / "tokens.npy").shape == (36, 20)
