"""Dataset specs: the shipped configs load, and malformed ones are refused naming the field."""

from __future__ import annotations

import pytest

from pipeline.datasets import DATASETS, ConfigError, DatasetPaths, load_dataset_spec, parse_dataset_spec


def test_shipped_specs_have_expected_sharding() -> None:
    specs = {name: load_dataset_spec(name) for name in DATASETS}
    assert specs["mirflickr1m"].n_shards == 100
    assert specs["mirflickr1m"].archives() == [f"images{k}" for k in range(10)]
    assert specs["mirflickr1m"].shards_by_archive()["images3"] == [f"{s:03d}" for s in range(30, 40)]
    assert specs["mirflickr25k"].shard_keys() == ["000", "001", "002"]
    assert specs["mirflickr25k"].shard_ids(2) == range(20_000, 25_000)
    assert specs["sample"].shards_by_archive() == {"images0": ["000", "001"]}


def test_shard_spanning_two_archives_maps_to_both() -> None:
    raw = {"name": "sample", "layout": "mirflickr1m", "n_images": 150_000, "shard_size": 60_000, "sample": {}}
    spec = parse_dataset_spec(raw)
    assert spec.shards_by_archive() == {"images0": ["000", "001"], "images1": ["001", "002"]}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"colour": 1}, "colour"),
        ({"name": "flickr"}, "name"),
        ({"layout": "zip"}, "layout"),
        ({"shard_size": 0}, "shard_size"),
        ({"n_images": "many"}, "n_images"),
        ({"base_url": None}, "base_url"),
        ({"md5": ["x"]}, "md5"),
    ],
)
def test_malformed_spec_names_the_field(change: dict, field: str) -> None:
    raw = {
        "name": "mirflickr1m",
        "layout": "mirflickr1m",
        "n_images": 10,
        "shard_size": 5,
        "base_url": "http://x/",
    }
    with pytest.raises(ConfigError, match=field):
        parse_dataset_spec(raw | change)


def test_unknown_dataset_refused() -> None:
    with pytest.raises(ConfigError, match="unknown dataset"):
        load_dataset_spec("imagenet")


def test_missing_shard_refused() -> None:
    with pytest.raises(ConfigError, match="shard 2"):
        load_dataset_spec("sample").shard_ids(2)


def test_paths_refuse_escaping_the_root(tmp_path) -> None:
    paths = DatasetPaths(tmp_path / "sample")
    assert paths.inside(paths.shard(3)) == (tmp_path / "sample" / "shards" / "lab_003.npy").resolve()
    with pytest.raises(ConfigError, match="outside the data root"):
        paths.inside(paths.root / ".." / "elsewhere.npy")
