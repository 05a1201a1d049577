"""Kind ``kaggle_lab``: the published Lab arrays streamed into shards, tags from MIRFLICKR-25k, rows checked."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import cv2
import dagster as dg
import numpy as np
import pytest

from model.config import TrainConfigError, load_train_config
from model.photo_sets import holdout_set
from pipeline.convert import convert_shards
from pipeline.core.color import rgb_to_lab_u8
from pipeline.core.config import ConfigError
from pipeline.core.layout import DataError, DatasetPaths, read_images_table
from pipeline.core.vocabulary import load_tag_encoding
from pipeline.datasets import parse_dataset_spec
from pipeline.defs.factory import build_dataset_assets
from pipeline.defs.resources import storage_from_environ
from pipeline.sources import kaggle_lab
from pipeline.sources.synthetic import sample_image, sample_tags
from pipeline.tokens import build_tag_tokens
from tests.helpers import SAMPLE, jpeg, materialize, training_refusal

N, SIDE = 7, 32
AB_ROWS = (4, 2, 1)


def kaggle_arrays(root: Path, rgbs: list[np.ndarray], order: list[int] | None = None) -> np.ndarray:
    """The published layout made from ``rgbs`` by a plain resize (rows in ``order``); returns the Lab rows."""
    lab = np.stack([rgb_to_lab_u8(cv2.resize(rgb, (SIDE, SIDE), interpolation=cv2.INTER_AREA)) for rgb in rgbs])
    lab = lab[order] if order is not None else lab
    (root / "l").mkdir(parents=True, exist_ok=True)
    (root / "ab" / "ab").mkdir(parents=True, exist_ok=True)
    np.save(root / "l" / "gray_scale.npy", lab[..., 0])
    start = 0
    for k, rows in enumerate(AB_ROWS, start=1):
        np.save(root / "ab" / "ab" / f"ab{k}.npy", lab[start : start + rows, ..., 1:])
        start += rows
    return lab


@pytest.fixture
def published(tmp_path: Path) -> tuple[Path, DatasetPaths, np.ndarray, list[bytes]]:
    """Arrays in a download folder; MIRFLICKR-25k's zip in the mirflickr25k dataset's raw/, as a user has them."""
    photos = [jpeg(sample_image(SAMPLE, k), quality=95) for k in range(N)]
    rgbs = [cv2.cvtColor(cv2.imdecode(np.frombuffer(p, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for p in photos]
    lab = kaggle_arrays(tmp_path / "download", rgbs)
    data = tmp_path / "data"
    shared = DatasetPaths(data / "mirflickr25k").archive("mirflickr25k")
    shared.parent.mkdir(parents=True)
    with zipfile.ZipFile(shared, "w") as archive:
        for k, photo in enumerate(photos):
            archive.writestr(f"mirflickr/im{k + 1}.jpg", photo)
            archive.writestr(f"mirflickr/meta/tags/tags{k + 1}.txt", "".join(f"{t}\n" for t in sample_tags(SAMPLE, k)))
    return tmp_path / "download", DatasetPaths(data / "kaggle"), lab, photos


def spec_for(root: Path, **values: object) -> kaggle_lab.Spec:
    raw = {"name": "kaggle", "kind": "kaggle_lab", "path": str(root), "shard_size": 3, "image_size": SIDE}
    return parse_dataset_spec(raw | values)


def test_rows_stream_into_shards_exactly_and_zero_rows_are_invalid(published, vocabulary_dir: Path) -> None:
    root, paths, lab, _ = published
    lab[5] = 0  # a gap in the arrays
    np.save(root / "l" / "gray_scale.npy", lab[..., 0])
    np.save(root / "ab" / "ab" / "ab2.npy", lab[4:6, ..., 1:])
    spec = spec_for(root)
    figures = spec.obtain("arrays", paths, None, print).figures
    assert (figures["images"], figures["ab_files"]) == (N, 3)
    live = spec.on_disk(paths)
    assert (live.n_images, live.shard_keys()) == (N, ["000", "001", "002"])
    results = convert_shards(live, paths, [0, 1, 2], vocabulary_dir, workers=1)
    assert [r.n_valid for r in results] == [3, 2, 1]
    shards = np.concatenate([np.load(paths.shard(s)) for s in range(3)])
    valid = np.arange(N) != 5
    np.testing.assert_array_equal(shards[valid], lab[valid])  # the rows, exactly
    images = read_images_table(paths)
    assert images["reason"].fillna("").tolist() == [""] * 5 + ["empty", ""]
    assert results[0].reasons["not_jpeg"] == 0, "arrays are no photo files of another format"


def test_tags_come_from_the_mirflickr25k_archive(published, vocabulary_dir: Path) -> None:
    root, paths, _, _ = published
    spec = spec_for(root)
    spec.obtain("arrays", paths, None, print)
    reused = spec.obtain_tags(paths, None, print)
    assert reused.figures == {"reused": True} and reused.path.parts[-3:] == ("mirflickr25k", "raw", "mirflickr25k.zip")
    result = build_tag_tokens(spec.on_disk(paths), paths, load_tag_encoding(vocabulary_dir))
    assert (result.n_images, result.missing) == (N, 0)
    with spec.open_tags(paths) as tags:
        assert tags.read(2) == "".join(f"{t}\n" for t in sample_tags(SAMPLE, 2)).encode()


def test_the_row_order_is_checked_against_the_photos(published, tmp_path: Path) -> None:
    root, paths, _, photos = published
    spec = spec_for(root)
    spec.obtain("arrays", paths, None, print)
    report = kaggle_lab.row_order(spec, paths)
    assert (report.checked, report.mismatches, report.geometry) == (N, 0, "resize")
    verdict = spec.verify(paths)["row_order"]
    assert verdict.problems == "" and verdict.figures == {
        "checked": N, "mismatches": 0, "geometry": "resize", "fits_crop": report.fits["crop"], "fits_resize": N
    }  # fmt: skip
    rgbs = [cv2.cvtColor(cv2.imdecode(np.frombuffer(p, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for p in photos]
    kaggle_arrays(root, rgbs, order=[*range(1, N), 0])  # every row one photo off
    shifted = kaggle_lab.row_order(spec, paths)
    assert shifted.mismatches >= N - 1
    assert spec.verify(paths)["row_order"].problems.startswith(f"{shifted.mismatches} of {N} sampled rows match no")


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:300])


DAMAGES = {
    "missing L": (lambda root: (root / L).unlink(), r"gray_scale\.npy: does not exist; expected uint8 \(N, S, S\)"),
    "4-d L": (lambda root: np.save(root / L, np.zeros((N, SIDE, SIDE, 1), np.uint8)), r"expected uint8 \(N, S, S\)"),
    "ab short": (lambda root: (root / AB / "ab3.npy").unlink(), r"6 ab rows for 7 L rows"),
    "ab shape": (
        lambda root: np.save(root / AB / "ab1.npy", np.zeros((4, SIDE, SIDE, 3), np.uint8)),
        r"ab1\.npy: .*expected uint8 \(n, 32, 32, 2\)",
    ),
    "truncated": (
        lambda root: truncate(root / AB / "ab2.npy"),
        r"ab2\.npy: truncated: 300 bytes where its header .* makes [\d,]+; expected uint8 \(n, 32, 32, 2\)",
    ),
}
L, AB = Path("l") / "gray_scale.npy", Path("ab") / "ab"


@pytest.mark.parametrize(("damage", "message"), DAMAGES.values(), ids=DAMAGES.keys())
def test_damaged_arrays_are_refused_naming_the_file_and_shape(published, damage, message: str) -> None:
    root, paths, _, _ = published
    damage(root)
    with pytest.raises(ConfigError, match=message):
        spec_for(root).obtain("arrays", paths, None, print)


def test_without_a_path_the_message_says_both_ways(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    spec = parse_dataset_spec({"name": "kaggle", "kind": "kaggle_lab"})
    with pytest.raises(ConfigError, match=r"set 'path:' .* or install the extra .*Kaggle credentials"):
        spec.obtain("arrays", DatasetPaths(tmp_path / "data" / "kaggle"), None, print)


def test_the_row_order_check_runs_with_lab_shards_in_dagster(published, vocabulary_dir: Path) -> None:
    root, paths, _, _ = published
    storage = storage_from_environ(
        {"TAGCOLOR_DATA_DIR": str(paths.root.parent), "TIKTOKEN_CACHE_DIR": str(vocabulary_dir)}
    )
    spec = spec_for(root)
    materialize(build_dataset_assets(spec), "kaggle/archives", storage, partition_key="arrays")
    materialize(build_dataset_assets(spec), "kaggle/tags_archive", storage)
    live = storage.resolve(spec)
    every_shard = {"dagster/asset_partition_range_start": "000", "dagster/asset_partition_range_end": "002"}
    shards = materialize(build_dataset_assets(live), "kaggle/lab_shards", storage, tags=every_shard)
    checks = {c.check_name: c for c in shards.get_asset_check_evaluations()}
    assert {name: check.passed for name, check in checks.items()} == {"shard_contract": True, "row_order": True}
    assert checks["row_order"].metadata["geometry"].value == "resize", "which geometry fits is reported"


def test_rows_beside_other_photos_tags_are_refused_where_they_are_used(published, vocabulary_dir: Path) -> None:
    """A failed row_order verdict is kept with the dataset: statistics, training and evaluation, each in a run of
    its own, refuse the data naming the check, until a run of lab_shards passes it."""
    root, paths, _, photos = published
    storage = storage_from_environ(
        {"TAGCOLOR_DATA_DIR": str(paths.root.parent), "TIKTOKEN_CACHE_DIR": str(vocabulary_dir)}
    )
    rgbs = [cv2.cvtColor(cv2.imdecode(np.frombuffer(p, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for p in photos]
    kaggle_arrays(root, rgbs, order=[*range(1, N), 0])  # every row one photo off
    spec = spec_for(root)
    materialize(build_dataset_assets(spec), "kaggle/archives", storage, partition_key="arrays")
    materialize(build_dataset_assets(spec), "kaggle/tags_archive", storage)
    live = build_dataset_assets(storage.resolve(spec))
    every_shard = {"dagster/asset_partition_range_start": "000", "dagster/asset_partition_range_end": "002"}
    shards = materialize(live, "kaggle/lab_shards", storage, tags=every_shard)
    assert {c.check_name: c.passed for c in shards.get_asset_check_evaluations()}["row_order"] is False
    materialize(live, "kaggle/tag_tokens", storage)

    refused = r"the check row_order of kaggle/lab_shards did not pass: \d+ of 7 sampled rows match no .*lab_shards"
    with pytest.raises(dg.Failure, match=refused):
        materialize(live, "kaggle/data_stats", storage)
    with pytest.raises(TrainConfigError, match=f"^data_root: .*{refused}"):
        load_train_config(None, [f"data_root={paths.root}", f"image_size={SIDE}"])
    with pytest.raises(DataError, match=refused):
        holdout_set(paths, 2, "o200k")
    refusal = training_refusal(f"data_root={paths.root}", f"image_size={SIDE}")
    assert re.search(refused, refusal), refusal

    kaggle_arrays(root, rgbs)  # the arrays as published: a passing run clears the verdict
    shards = materialize(live, "kaggle/lab_shards", storage, tags=every_shard)
    assert all(c.passed for c in shards.get_asset_check_evaluations())
    assert materialize(live, "kaggle/data_stats", storage).success
    assert load_train_config(None, [f"data_root={paths.root}", f"image_size={SIDE}"]).holdout_shard == 2
