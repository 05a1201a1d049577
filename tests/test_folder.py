"""Kind ``folder``: your own photos, a manifest that fixes the order and grows, and every bad case counted."""

from __future__ import annotations

import io
import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.core.layout import DatasetPaths, Split, read_images_table
from pipeline.datasets import parse_dataset_spec
from pipeline.defs.factory import build_dataset_assets
from pipeline.defs.resources import storage_from_environ
from pipeline.sources import folder
from pipeline.sources.synthetic import sample_image
from tests.helpers import SAMPLE, folder_of_scenes, materialize, png_header, scene, write_photos


def spec_for(root: Path, **values: object) -> folder.Spec:
    return parse_dataset_spec({"name": "mine", "kind": "folder", "path": str(root), "image_size": 32, **values})


def obtain(spec: folder.Spec, paths: DatasetPaths) -> dict:
    return spec.on_disk(paths).obtain(folder.ARCHIVE, paths, None, print).figures


def test_scan_orders_paths_and_passes_over_what_is_no_photo(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    write_photos(root, {"b/2.JPG": b"x", "a/10.png": b"x", "a/1.jpeg": b"x", "c.WebP": b"x", "notes.md": b"x"})
    (root / "a" / "1.txt").write_text("sky\n")
    (root / "tags.csv").write_text("path,tags\n")
    outside = tmp_path / "elsewhere.jpg"
    outside.write_bytes(b"x")
    (root / "leaves.jpg").symlink_to(outside)
    (root / "stays.jpg").symlink_to(root / "c.WebP")
    (root / "linked_dir").symlink_to(tmp_path, target_is_directory=True)
    found = folder.scan(root)
    assert found.photos == ["a/1.jpeg", "a/10.png", "b/2.JPG", "c.WebP", "stays.jpg"]
    assert (found.skipped_files, found.outside_links) == (1, 1), "notes.md; the link leaving the folder"


def test_the_manifest_fixes_ids_and_appends_new_photos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, paths = tmp_path / "photos", DatasetPaths(tmp_path / "data" / "mine")
    names = folder_of_scenes(root, 10, sidecars=False)
    spec = spec_for(root)
    first = obtain(spec, paths)
    assert (first["photos"], first["new"], first["hashed"], first["shard_size"], first["holdout_shard"]) == (
        10,
        10,
        10,
        2,
        4,
    )
    manifest = folder.read_manifest(paths)
    assert manifest["path"].tolist() == sorted(names) and manifest["image_id"].tolist() == list(range(10))
    assert Split.read(paths) == Split(shard_size=2, holdout_shard=4)
    assert spec.on_disk(paths).n_images == 10 and spec.on_disk(paths).shard_keys() == [
        "000",
        "001",
        "002",
        "003",
        "004",
    ]

    hashed: list[Path] = []
    original = folder.file_sha1
    monkeypatch.setattr(folder, "file_sha1", lambda path: hashed.append(path) or original(path))
    write_photos(root, {"album0/aa_new.jpg": scene(20), "zz/new.png": scene(21)})  # one sorts before old photos
    (root / "album0" / "photo03.jpg").write_bytes(scene(3)[:-100])
    (root / "album0" / "photo05.jpg").unlink()
    os.utime(root / "album0" / "photo07.jpg", ns=(1, 1))  # touched: same bytes, new mtime
    second = obtain(spec, paths)
    assert {k: second[k] for k in ("new", "changed", "missing", "unchanged")} == {
        "new": 2, "changed": 1, "missing": 1, "unchanged": 8
    }  # fmt: skip
    assert sorted(p.name for p in hashed) == ["aa_new.jpg", "new.png", "photo03.jpg", "photo07.jpg"], "only these read"
    grown = folder.read_manifest(paths)
    assert grown["path"].tolist()[:10] == manifest["path"].tolist(), "existing ids never move"
    assert grown["path"].tolist()[10:] == ["album0/aa_new.jpg", "zz/new.png"]
    assert grown.set_index("path")["status"].to_dict() | {} == {
        **dict.fromkeys(grown["path"], "ok"), "album0/photo03.jpg": "changed", "album0/photo05.jpg": "missing"
    }  # fmt: skip
    assert Split.read(paths) == Split(shard_size=2, holdout_shard=4), "the split stays as first fixed"
    assert spec.on_disk(paths).n_shards == 6
    hashed.clear()
    obtain(spec, paths)
    assert hashed == [photo for photo in hashed if photo.name == "photo03.jpg"], "unchanged files are not read"


def test_duplicates_are_reported_and_never_count_as_held_out(tmp_path: Path) -> None:
    root, paths = tmp_path / "photos", DatasetPaths(tmp_path / "data" / "mine")
    folder_of_scenes(root, 9, sidecars=False)
    write_photos(root, {"zz/copy_of_first.jpg": scene(0)})  # id 9: in the held-out shard 4 (ids 8, 9)
    figures = obtain(spec_for(root), paths)
    assert (figures["duplicates"], figures["duplicates_held_out"]) == (1, 1)
    with spec_for(root).open_photos(paths) as photos:
        assert photos.read(8) == scene(8)
        with pytest.raises(folder.PhotoUnavailable, match="duplicate"):
            photos.read(9)


def test_tags_from_sidecars_or_from_tags_csv(tmp_path: Path) -> None:
    root, paths = tmp_path / "photos", DatasetPaths(tmp_path / "data" / "mine")
    write_photos(root, {"a.jpg": scene(0), "b.jpg": scene(1), "c/d.jpg": scene(2)})
    (root / "a.txt").write_bytes("café\nmünchen\n".encode("latin-1"))
    (root / "c" / "d.txt").write_text("".join(f"tag{i}\n" for i in range(10_000)))
    spec = spec_for(root)
    obtain(spec, paths)
    with spec.open_tags(paths) as tags:
        assert tags.read(0) == "café\nmünchen\n".encode("latin-1") and tags.read(1) is None
        assert tags.read(2).count(b"\n") == 10_000
    (root / "tags.csv").write_text(
        'path,tags\na.jpg,"sky, sea"\n../escape.jpg,evil\n/etc/passwd,evil\nnothere.jpg,x\nc/d.jpg,\n'
    )
    with spec.open_tags(paths) as tags:
        assert [tags.read(i) for i in range(3)] == [b"sky\nsea", None, b""], "tags.csv wins over sidecars"
        assert tags.csv_counts == {"csv_rows": 5, "csv_rows_outside": 2, "csv_rows_unknown": 1}
        assert tags.unsafe_entries() == 2


def bad_folder(root: Path, outside: Path) -> dict[str, str]:
    """Good photos and every bad case, by path; the value is the row's expected ``reason`` ('' = valid)."""
    cmyk = io.BytesIO()
    Image.new("CMYK", (40, 30), (0, 200, 200, 0)).save(cmyk, format="JPEG")
    sixteen = io.BytesIO()
    Image.fromarray(np.arange(40 * 30, dtype=np.uint16).reshape(30, 40) * 50).save(sixteen, format="PNG")
    as_png = io.BytesIO()
    Image.fromarray(sample_image(SAMPLE, 3)).save(as_png, format="PNG")
    scan_8, scan_16 = io.BytesIO(), cv2.imencode(".tif", sample_image(SAMPLE, 8).astype(np.uint16) * 257)[1]
    Image.fromarray(sample_image(SAMPLE, 9)).save(scan_8, format="TIFF")
    cases = {
        "good/0.jpg": (scene(0), ""),
        "good/1.jpg": (scene(1), ""),
        "good/2.JPEG": (scene(2), ""),
        "bad/cmyk.jpg": (cmyk.getvalue(), ""),
        "bad/empty.jpg": (b"", "empty"),
        "bad/huge.png": (png_header(20_000, 20_000), "too_large"),
        "bad/png_named.jpg": (as_png.getvalue(), ""),
        "bad/sixteen_bit.png": (sixteen.getvalue(), ""),
        "bad/text.jpg": (b"this is no photo", "undecodable"),
        "bad/truncated.jpg": (scene(4)[: len(scene(4)) // 2], "truncated"),
        "good/3.jpg": (scene(5), ""),
        "good/4.jpg": (scene(6), ""),
        "scans/8_bit.tif": (scan_8.getvalue(), ""),
        "scans/16_bit.TIFF": (scan_16.tobytes(), ""),
    }
    write_photos(root, {name: data for name, (data, _) in cases.items()})
    outside.write_bytes(scene(7))
    (root / "bad" / "leaves.jpg").symlink_to(outside)
    (root / "readme.md").write_text("not a photo")
    (root / "good" / "0.txt").write_bytes("café\n".encode("latin-1"))
    return {name: reason for name, (_, reason) in cases.items()}


def test_every_bad_case_is_counted_and_nothing_shifts(tmp_path: Path, vocabulary_dir: Path) -> None:
    root, outside = tmp_path / "photos", tmp_path / "outside.jpg"
    expected = bad_folder(root, outside)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    env = {"TAGCOLOR_DATA_DIR": str(tmp_path / "data"), "TIKTOKEN_CACHE_DIR": str(vocabulary_dir)}
    storage = storage_from_environ(env)
    spec = storage.resolve(parse_dataset_spec({"name": "mine", "kind": "folder", "path": str(root), "image_size": 32}))
    run = materialize(build_dataset_assets(spec), "mine/archives", storage, partition_key="folder")
    materialize(build_dataset_assets(spec), "mine/tags_archive", storage)
    scanned = run.get_asset_materialization_events()[0].materialization.metadata
    assert (scanned["photos"].value, scanned["outside_links"].value, scanned["skipped_files"].value) == (14, 1, 1)

    live = storage.resolve(spec)  # the manifest now fixes 14 photos in shards of 3
    assert live.shard_keys() == ["000", "001", "002", "003", "004"]
    assets = build_dataset_assets(live)
    every_shard = {"dagster/asset_partition_range_start": "000", "dagster/asset_partition_range_end": "004"}
    shards = materialize(assets, "mine/lab_shards", storage, tags=every_shard)
    assert [c.passed for c in shards.get_asset_check_evaluations()] == [True], "the shard contract holds"
    tokens = materialize(assets, "mine/tag_tokens", storage)
    assert [c.passed for c in tokens.get_asset_check_evaluations()] == [True]
    stats = materialize(assets, "mine/data_stats", storage)
    assert [c.passed for c in stats.get_asset_check_evaluations()] == [True], "tokens align with images"

    paths = storage.paths("mine")
    images = read_images_table(paths)
    manifest = folder.read_manifest(paths)
    by_path = dict(zip(manifest["path"], images["reason"].fillna(""), strict=True))
    assert by_path == expected
    assert images["valid"].tolist() == [not expected[p] for p in manifest["path"]]
    tags = pd.read_parquet(paths.tags_table)
    assert tags.loc[manifest["path"].tolist().index("good/0.jpg"), "tags"].tolist() == ["café"]
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before, "the folder is only read"
    assert outside.read_bytes() == scene(7)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["mine"], "nothing outside the data root"


def test_an_unreadable_photo_is_counted_and_waits_for_a_later_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, paths = tmp_path / "photos", DatasetPaths(tmp_path / "data" / "mine")
    folder_of_scenes(root, 4, sidecars=False)
    original = folder.file_sha1

    def locked(path: Path) -> str:
        if path.name == "photo01.jpg":
            raise PermissionError(f"{path}: permission denied")
        return original(path)

    monkeypatch.setattr(folder, "file_sha1", locked)
    figures = obtain(spec_for(root), paths)
    assert (figures["photos"], figures["unreadable"]) == (3, 1)
    monkeypatch.setattr(folder, "file_sha1", original)
    assert obtain(spec_for(root), paths)["new"] == 1, "readable again: it gets the next id"
    assert folder.read_manifest(paths)["path"].tolist()[-1] == "album0/photo01.jpg"
