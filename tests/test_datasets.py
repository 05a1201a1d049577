"""Datasets as data: the shipped files load, kinds are a registry, and malformed files are refused by field."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.core.config import ConfigError
from pipeline.core.layout import DatasetPaths
from pipeline.datasets import (
    DATASETS_DIR,
    KINDS,
    env_var,
    identifier,
    kind_spec,
    load_dataset_spec,
    load_dataset_specs,
    parse_dataset_spec,
)
from pipeline.sources import folder, kaggle_lab, mirflickr1m, mirflickr25k, synthetic
from pipeline.storage import dataset_dirs_from_environ

MIRFLICKR1M = {"name": "flickr", "kind": "mirflickr1m", "n_images": 10, "shard_size": 5, "base_url": "http://x/"}


def test_shipped_specs_have_expected_sharding() -> None:
    specs = load_dataset_specs()
    assert set(specs) == {"sample", "mirflickr25k", "mirflickr1m"}
    assert specs["mirflickr1m"].n_shards == 100
    assert specs["mirflickr1m"].archives() == [f"images{k}" for k in range(10)]
    assert specs["mirflickr1m"].shards_by_archive()["images3"] == [f"{s:03d}" for s in range(30, 40)]
    assert specs["mirflickr25k"].shard_keys() == ["000", "001", "002"]
    assert specs["mirflickr25k"].shard_ids(2) == range(20_000, 25_000)
    assert specs["sample"].shards_by_archive() == {"images0": ["000", "001"]}
    assert {name: spec.train_config for name, spec in specs.items()} == {
        "sample": "sample_demo",
        "mirflickr25k": "mirflickr25k_1gpu",
        "mirflickr1m": "mirflickr1m_1gpu",
    }


def test_each_kind_is_its_module_spec() -> None:
    assert kind_spec("mirflickr1m") is mirflickr1m.Spec
    assert kind_spec("mirflickr25k") is mirflickr25k.Spec
    assert kind_spec("synthetic") is synthetic.Spec
    assert kind_spec("folder") is folder.Spec
    assert kind_spec("kaggle_lab") is kaggle_lab.Spec
    assert {kind_spec(kind).kind for kind in KINDS} == set(KINDS)
    assert type(load_dataset_spec("sample")) is synthetic.Spec


def test_shard_spanning_two_archives_maps_to_both() -> None:
    spec = parse_dataset_spec({"name": "s", "kind": "synthetic", "n_images": 150_000, "shard_size": 60_000})
    assert spec.shards_by_archive() == {"images0": ["000", "001"], "images1": ["001", "002"]}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"colour": 1}, r"^flickr\.yaml: colour: unknown key"),
        ({"name": "Flickr!"}, "'name' must be lower-case"),
        (
            {"kind": "zip"},
            r"'kind' must be one of \['folder', 'kaggle_lab', 'mirflickr1m', 'mirflickr25k', 'synthetic'\], got 'zip'",
        ),
        ({"shard_size": 0}, "'shard_size' must be a positive integer, got 0"),
        ({"n_images": "many"}, "^flickr.yaml: n_images: expected int"),
        ({"image_size": True}, "^flickr.yaml: image_size: expected int"),
        ({"base_url": None}, "^flickr.yaml: base_url: expected str"),
        ({"base_url": ""}, "'base_url' is required"),
        ({"md5": ["x"]}, "^flickr.yaml: md5: expected a mapping"),
        ({"md5": {"images7": "0" * 32}}, "'images7' is not an archive"),
        ({"md5": {"images0": "xyz"}}, "32 hex digits"),
        ({"base_url": "ftp://mirror/"}, "'base_url': .*'ftp'"),
        ({"seed": 1}, r"^flickr\.yaml: seed: unknown key"),
        ({"train_config": 3}, "^flickr.yaml: train_config: expected str"),
    ],
)
def test_malformed_spec_names_the_field(change: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        parse_dataset_spec(MIRFLICKR1M | change, "flickr.yaml")


def test_required_keys_are_named() -> None:
    with pytest.raises(ConfigError, match=r"^flickr\.yaml: shard_size: missing"):
        parse_dataset_spec({k: v for k, v in MIRFLICKR1M.items() if k != "shard_size"}, "flickr.yaml")


@pytest.mark.parametrize(
    ("values", "message"), [({"seed": -1}, "'seed' must be a non-negative"), ({"width": 0}, "'width'")]
)
def test_malformed_synthetic_fields_are_named(values: dict, message: str) -> None:
    raw = {"name": "s", "kind": "synthetic", "n_images": 4, "shard_size": 2}
    with pytest.raises(ConfigError, match=message):
        parse_dataset_spec(raw | values)


def test_a_file_carries_its_own_name(tmp_path: Path) -> None:
    text = (DATASETS_DIR / "mirflickr1m.yaml").read_text()
    (tmp_path / "mirflickr25k.yaml").write_text(text)
    with pytest.raises(ConfigError, match="'name' must be 'mirflickr25k'"):
        load_dataset_specs([tmp_path])
    (tmp_path / "mirflickr25k.yaml").write_text("name: [unclosed")
    with pytest.raises(ConfigError, match=r"mirflickr25k\.yaml: not valid YAML"):
        load_dataset_specs([tmp_path])


def test_extra_directories_add_datasets_and_clashes_are_refused(tmp_path: Path) -> None:
    (tmp_path / "my-photos.yaml").write_text((DATASETS_DIR / "sample.yaml").read_text().replace("sample", "my-photos"))
    specs = load_dataset_specs([DATASETS_DIR, tmp_path])
    assert list(specs) == ["mirflickr1m", "mirflickr25k", "sample", "my-photos"]
    assert (identifier("my-photos"), env_var("my-photos", "url")) == ("my_photos", "TAGCOLOR_MY_PHOTOS_URL")
    (tmp_path / "my_photos.yaml").write_text((DATASETS_DIR / "sample.yaml").read_text().replace("sample", "my_photos"))
    with pytest.raises(ConfigError, match=r"dataset 'my_photos' is defined in .*my-photos\.yaml already"):
        load_dataset_specs([DATASETS_DIR, tmp_path])
    with pytest.raises(ConfigError, match="no such directory"):
        load_dataset_specs([tmp_path / "missing"])


def test_datasets_dir_from_the_environment_resolves_against_the_repository() -> None:
    assert dataset_dirs_from_environ({}) == [DATASETS_DIR]
    assert dataset_dirs_from_environ({"TAGCOLOR_DATASETS_DIR": "extra"}) == [
        DATASETS_DIR,
        DATASETS_DIR.parents[1] / "extra",
    ]
    assert dataset_dirs_from_environ({"TAGCOLOR_DATASETS_DIR": "/abs"}) == [DATASETS_DIR, Path("/abs")]


def test_unknown_dataset_refused() -> None:
    with pytest.raises(ConfigError, match="unknown dataset 'imagenet'"):
        load_dataset_spec("imagenet")


def test_missing_shard_refused() -> None:
    with pytest.raises(ConfigError, match="shard 2"):
        load_dataset_spec("sample").shard_ids(2)


def test_paths_refuse_escaping_the_root(tmp_path) -> None:
    paths = DatasetPaths(tmp_path / "sample")
    assert paths.inside(paths.shard(3)) == (tmp_path / "sample" / "shards" / "lab_003.npy").resolve()
    with pytest.raises(ConfigError, match="outside the data root"):
        paths.inside(paths.root / ".." / "elsewhere.npy")
