"""The real-photo benchmark's folder: split by photo, the held-out shard holding exactly the test photos, and the
validation photos named in its train configs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from pipeline.sources.folder import first_split, scan

from .helpers import REPO_ROOT


def load_benchmark() -> ModuleType:
    """The script, imported by its path (benchmarks/ is no package)."""
    spec = importlib.util.spec_from_file_location("real_photos", REPO_ROOT / "benchmarks" / "real_photos.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while they are made
    spec.loader.exec_module(module)
    return module


def test_the_held_out_shard_holds_the_test_photos_and_validation_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    benchmark = load_benchmark()
    photos = [photo for photo in benchmark.PHOTOS if photo.source == "skimage"]
    monkeypatch.setattr(benchmark, "PHOTOS", photos)
    argv = ["real_photos.py", str(tmp_path), "--crops", "3", "--test", "2", "--validation", "2", "--seed", "1"]
    monkeypatch.setattr(sys, "argv", argv)
    benchmark.main()

    dataset = yaml.safe_load((tmp_path / "datasets" / "real-photos.yaml").read_text())
    found = scan(Path(dataset["path"])).photos  # the order the folder kind gives ids in
    split = first_split(len(found), dataset["shard_size"])
    assert dataset["shard_size"] == 2 * 3
    assert len(found) % dataset["shard_size"] == 0, "training and validation crops fill whole shards"
    held = [path for i, path in enumerate(found) if i // split.shard_size == split.holdout_shard]
    assert {path.split("/")[0] for path in held} == {"3-test"}
    assert len(held) == sum(path.startswith("3-test/") for path in found)
    validation = [i for i, path in enumerate(found) if path.startswith("2-validation/")]
    for preset in ("folder", "sample_demo"):
        config = yaml.safe_load((tmp_path / "train" / f"{preset}.yaml").read_text())
        assert config["val_ids"] == validation and len(validation) == 2 * 3
    names = {split: {line.split("\t")[1] for line in (tmp_path / "split.txt").read_text().splitlines()[1:]
                     if line.startswith(split)} for split in benchmark.SPLITS}  # fmt: skip
    assert sum(len(group) for group in names.values()) == len(photos)
    assert not (names["1-training"] & names["3-test"]) and not (names["2-validation"] & names["3-test"])
    tags = (Path(dataset["path"]) / held[0]).with_suffix(".txt").read_text().split()
    assert tags and all(tag.islower() for tag in tags)
