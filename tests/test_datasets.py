"""Dataset specs: the shipped configs load, and malformed ones are refused naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.core.config import ConfigError
from pipeline.core.layout import DatasetPaths
from pipeline.datasets import CONFIG_DIR, DATASETS, load_dataset_spec, parse_dataset_spec


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
        ({"md5": {"images7": "0" * 32}}, "'images7' is not an archive"),
        ({"md5": {"images0": "xyz"}}, "32 hex digits"),
        ({"base_url": "ftp://mirror/"}, "'base_url': .*'ftp'"),
        ({"layout": "mirflickr25k"}, "'layout' of mirflickr1m must be 'mirflickr1m'"),
        ({"sample": {}}, "'sample' section"),
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


@pytest.mark.parametrize("seed", [-1, "abc", True])
def test_malformed_sample_seed_is_named(seed: object) -> None:
    raw = {"name": "sample", "layout": "mirflickr1m", "n_images": 4, "shard_size": 2, "sample": {"seed": seed}}
    with pytest.raises(ConfigError, match="'seed' must be a non-negative integer"):
        parse_dataset_spec(raw)


def test_config_file_must_exist_and_carry_its_own_name(tmp_path: Path) -> None:
    (tmp_path / "datasets").mkdir()
    with pytest.raises(ConfigError, match=r"sample\.yaml: cannot read"):
        load_dataset_spec("sample", tmp_path)
    text = (CONFIG_DIR / "datasets" / "mirflickr1m.yaml").read_text()
    (tmp_path / "datasets" / "mirflickr25k.yaml").write_text(text)
    with pytest.raises(ConfigError, match="'name' must be 'mirflickr25k', the file's name, got 'mirflickr1m'"):
        load_dataset_spec("mirflickr25k", tmp_path)


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
