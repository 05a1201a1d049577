"""Colouring a folder's photos: output names that never meet, photos read whole with their EXIF, outputs and
their manifest written atomically."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.colorized import (
    MANIFEST_SCHEMA,
    ColorizedError,
    OutputSettings,
    Refused,
    ShardReport,
    colour_shard,
    manifest_path,
    output_names,
    read_colorized_manifest,
    read_photo,
    up_to_date,
    write_colorized_manifest,
    write_output,
)
from pipeline.core.photos import ORIENTATION_TAG
from pipeline.datasets import parse_dataset_spec
from pipeline.defs.factory import build_dataset_assets
from pipeline.defs.resources import storage_from_environ
from pipeline.sources.base import MAX_PHOTO_BYTES
from tests.helpers import materialize, png_header

DATE_TAG = 0x0132


def test_outputs_mirror_the_tree_and_never_meet() -> None:
    paths = ["a.jpg", "a.png", "b/c.TIFF", "b/C.jpg", "d.png", "a.png.jpg", "e/f.jpeg"]
    names = output_names(paths, ".jpg")
    assert names["d.png"] == "d.jpg" and names["e/f.jpeg"] == "e/f.jpg"
    assert names["a.jpg"] == "a.jpg.jpg" and names["a.png"] == "a.png.jpg"
    assert names["a.png.jpg"] == "a.png.jpg_2.jpg", "its plain name went to a.png: numbered"
    assert {names["b/c.TIFF"], names["b/C.jpg"]} == {"b/c.TIFF.jpg", "b/C.jpg.jpg"}, "names differing in case"
    assert len({name.casefold() for name in names.values()}) == len(paths)
    assert output_names(list(reversed(paths)), ".jpg") == names, "the same names whatever the order given"


def jpeg_with_exif(rgb: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[DATE_TAG] = "2001:02:03 04:05:06"
    exif[ORIENTATION_TAG] = orientation
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="JPEG", exif=exif.tobytes(), quality=95)
    return out.getvalue()


def test_photos_are_read_upright_with_their_exif_and_written_with_it(tmp_path: Path) -> None:
    rgb = np.zeros((20, 40, 3), np.uint8)
    rgb[:, :20] = (200, 40, 40)
    photo = read_photo(jpeg_with_exif(rgb, orientation=6))  # a quarter turn: 40 high, 20 wide upright
    assert photo.rgb.shape == (40, 20, 3)
    out = tmp_path / "sub" / "photo.jpg"
    size = write_output(photo.rgb, photo.exif, out, OutputSettings())
    assert size == out.stat().st_size > 0
    with Image.open(out) as written:
        exif = written.getexif()
        assert written.size == (20, 40) and written.format == "JPEG"
    assert exif[DATE_TAG] == "2001:02:03 04:05:06" and exif[ORIENTATION_TAG] == 1, "upright pixels, date kept"
    png = write_output(photo.rgb, b"", tmp_path / "photo.png", OutputSettings("png"))
    assert png > 0 and np.array_equal(np.asarray(Image.open(tmp_path / "photo.png")), photo.rgb)
    assert [p.name for p in tmp_path.glob(".*")] == [], "no temporary left"


def test_greyscale_and_16_bit_photos_become_8_bit_rgb_and_bad_ones_are_refused() -> None:
    grey = (np.arange(30 * 40) % 256).astype(np.uint8).reshape(30, 40)
    sixteen = cv2.imencode(".tif", np.dstack([grey.astype(np.uint16) * 257] * 3))[1].tobytes()
    as_grey = io.BytesIO()
    Image.fromarray(grey).save(as_grey, format="PNG")
    for data in (sixteen, as_grey.getvalue()):
        photo = read_photo(data)
        assert photo.rgb.dtype == np.uint8 and photo.rgb.shape == (30, 40, 3)
        assert np.abs(photo.rgb[..., 0].astype(int) - grey).max() <= 1
    with pytest.raises(Refused) as empty:
        read_photo(b"")
    assert empty.value.reason == "empty"
    with pytest.raises(Refused) as text:
        read_photo(b"no photo at all")
    assert text.value.reason == "undecodable"
    with pytest.raises(Refused) as bomb:
        read_photo(png_header(20_000, 20_000))  # 400 megapixels declared: Pillow's guard refuses it unread
    assert bomb.value.reason == "too_large"


def test_settings_are_checked_and_the_manifest_round_trips(tmp_path: Path) -> None:
    with pytest.raises(ColorizedError, match=r"^format:"):
        OutputSettings("gif")
    with pytest.raises(ColorizedError, match=r"^quality:"):
        OutputSettings(quality=0)
    assert OutputSettings().key == "jpeg q95" and OutputSettings("png", 10).key == "png"
    path = tmp_path / "manifest_000.parquet"
    assert read_colorized_manifest(path).empty
    (tmp_path / "a.jpg").write_bytes(b"x")
    row = {"path": "a.png", "output": "a.jpg", "size": 3, "mtime_ns": 4, "sha1": "s", "checkpoint_sha256": "c",
           "tags": "1 2", "settings": "jpeg q95", "width": 5, "height": 6}  # fmt: skip
    write_colorized_manifest(path, pd.DataFrame([row]))
    read = read_colorized_manifest(path)
    assert read.to_dict("records") == [row] and list(read.columns) == MANIFEST_SCHEMA.names
    recorded = read.iloc[0].to_dict()
    assert up_to_date(recorded, dict(recorded), tmp_path)
    changes = {"output": "b.jpg", "sha1": "t", "checkpoint_sha256": "d", "tags": "3", "settings": "png"}
    for key, value in changes.items():
        assert not up_to_date(recorded, recorded | {key: value}, tmp_path), f"another {key}"
    (tmp_path / "a.jpg").unlink()
    assert not up_to_date(recorded, dict(recorded), tmp_path), "the output is gone"
    path.write_bytes(b"damaged")
    assert read_colorized_manifest(path).empty, "a damaged manifest colours everything again"


class CountingColourer:
    """A stand-in model: paints each photo's first channel 255, records the photos it was given."""

    checkpoint_sha256 = "c" * 64

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []

    def tag_key(self, tags: Sequence[str]) -> str:
        return ",".join(tags)

    def colour(self, photos: Sequence[np.ndarray], tags: Sequence[Sequence[str]]) -> list[np.ndarray]:
        assert len(photos) == len(tags)
        out = []
        for rgb in photos:
            self.seen.append(rgb.shape[:2])
            painted = rgb.copy()
            painted[..., 0] = 255
            out.append(painted)
        return out


def write_folder(root: Path) -> list[str]:
    """Grey and colour photos, a 16-bit TIFF, two of one stem and an undecodable file; their sorted paths."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    (root / "colour.jpg").write_bytes(jpeg_with_exif(colour, orientation=1))
    Image.fromarray(colour[..., 1]).save(root / "grey.png")
    (root / "scans").mkdir()
    (root / "scans" / "scan16.tif").write_bytes(cv2.imencode(".tif", colour.astype(np.uint16) * 257)[1].tobytes())
    Image.fromarray(colour).save(root / "scans" / "a.jpg")
    Image.fromarray(colour[::-1]).save(root / "scans" / "a.png")
    (root / "bad.jpg").write_bytes(b"not a photo")
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_a_shard_is_coloured_once_and_again_only_where_something_changed(tmp_path: Path) -> None:
    root, out = tmp_path / "photos", tmp_path / "colorized"
    paths = write_folder(root)
    tags = {path: ["sky"] for path in [*paths, "new.png"]}
    colourer = CountingColourer()

    def run(paths: list[str], **options: object) -> ShardReport:
        return colour_shard(root, paths, out, 0, colourer, tags.__getitem__, OutputSettings(), batch_size=2, **options)

    first = run(paths)
    assert sorted(p for p, _ in first.coloured) == [p for p in paths if p != "bad.jpg"]
    assert first.refused == {"undecodable": ["bad.jpg"]} and first.skipped == 0 and first.removed == []
    outputs = {p: o for p, o in first.coloured}
    assert outputs["scans/a.jpg"] == "scans/a.jpg.jpg" and outputs["scans/a.png"] == "scans/a.png.jpg"
    assert outputs["scans/scan16.tif"] == "scans/scan16.jpg"
    for path, output in outputs.items():
        with Image.open(out / output) as written, Image.open(root / path) as original:
            assert written.size == original.size and written.format == "JPEG"
    with Image.open(out / "colour.jpg") as written:
        assert written.getexif()[DATE_TAG] == "2001:02:03 04:05:06"
    manifest = read_colorized_manifest(manifest_path(out, 0))
    assert sorted(manifest["path"]) == sorted(outputs) and (manifest["checkpoint_sha256"] == "c" * 64).all()

    again = run(paths)
    assert again.coloured == [] and again.skipped == len(outputs), "nothing coloured again"

    (root / "new.png").write_bytes((root / "grey.png").read_bytes())
    (root / "colour.jpg").write_bytes(jpeg_with_exif(np.zeros((24, 32, 3), np.uint8), orientation=1))
    os.utime(root / "scans" / "a.jpg", ns=(1, 1))  # touched, not changed: read, found equal, skipped
    third = run([*paths, "new.png"])
    assert sorted(p for p, _ in third.coloured) == ["colour.jpg", "new.png"] and third.skipped == 4

    tags["grey.png"] = ["sunset"]
    (root / "scans" / "a.png").unlink()
    fourth = run([*paths, "new.png"])
    assert [p for p, _ in fourth.coloured] == ["grey.png"], "other tags: coloured again"
    assert fourth.removed == ["scans/a.png.jpg"] and (out / "scans" / "a.png.jpg").is_file(), "kept, reported"
    pruned = run([*paths, "new.png"], prune=True)
    assert pruned.removed == ["scans/a.png.jpg"] and not (out / "scans" / "a.png.jpg").exists()
    assert "scans/a.png" not in set(read_colorized_manifest(manifest_path(out, 0))["path"])
    assert len(colourer.seen) == len(outputs) + 3


def test_photos_linked_out_of_the_folder_or_too_large_are_refused_not_fatal(tmp_path: Path) -> None:
    root, outside = tmp_path / "photos", tmp_path / "elsewhere.png"
    paths = write_folder(root)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(outside)
    (root / "link.png").symlink_to(outside)
    with (root / "huge.jpg").open("wb") as huge:
        huge.truncate(MAX_PHOTO_BYTES + 1)  # sparse: the size alone refuses it, unread
    colourer = CountingColourer()
    report = colour_shard(root, [*paths, "huge.jpg", "link.png", "gone.png"], tmp_path / "out", 0, colourer,
                          lambda path: [], OutputSettings())  # fmt: skip
    assert report.refused == {"undecodable": ["bad.jpg"], "too_large": ["huge.jpg"], "missing": ["link.png"]}
    assert len(report.coloured) == len(paths) - 1 and len(colourer.seen) == len(paths) - 1


def test_the_colorized_asset_colours_a_folder_with_another_datasets_run_then_only_what_changed(
    tmp_path: Path, tiny_checkpoint: Path, vocabulary_dir: Path
) -> None:
    root, data = tmp_path / "scans", tmp_path / "data"
    paths = write_folder(root)
    Image.fromarray(np.full((30, 20), 90, np.uint8)).save(root / "scans" / "eight.tif")
    (root / "colour.txt").write_text("sunset\nbeach\n")
    donor = data / "donor" / "runs" / "tiny"
    donor.mkdir(parents=True)
    shutil.copy(tiny_checkpoint, donor / "latest.pt")
    storage = storage_from_environ({"TAGCOLOR_DATA_DIR": str(data), "TIKTOKEN_CACHE_DIR": str(vocabulary_dir)})
    spec = parse_dataset_spec({"name": "scans", "kind": "folder", "path": str(root), "shard_size": 50})

    def scan() -> list:
        assets = build_dataset_assets(storage.resolve(spec))
        materialize(assets, "scans/archives", storage, partition_key="folder")
        return build_dataset_assets(storage.resolve(spec))

    def colour(assets: list) -> dict:
        config = {"ops": {"scans__colorized": {"config": {"run": "donor/tiny", "batch_size": 3}}}}
        run = materialize(assets, "scans/colorized", storage, partition_key="000", run_config=config)
        return run.get_asset_materialization_events()[0].materialization.metadata

    first = colour(scan())
    photos = len(paths)  # and eight.tif, less bad.jpg
    assert (first["coloured"].value, first["up_to_date"].value, first["refused_undecodable"].value) == (photos, 0, 1)
    out = data / "scans" / "colorized" / "donor" / "tiny"
    assert Path(first["out_dir"].value) == out and first["checkpoint"].value == str(donor / "latest.pt")
    assert first["checkpoint_sha256"].value == hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()
    preview = first["preview"].value
    assert preview.startswith(f"{photos} coloured, 0 up to date, 1 refused (1 undecodable)") and "base64," in preview
    for source, output in {"scans/scan16.tif": "scans/scan16.jpg", "scans/eight.tif": "scans/eight.jpg",
                           "scans/a.jpg": "scans/a.jpg.jpg", "scans/a.png": "scans/a.png.jpg",
                           "grey.png": "grey.jpg", "colour.jpg": "colour.jpg"}.items():  # fmt: skip
        with Image.open(out / output) as written, Image.open(root / source) as original:
            assert written.size == original.size, output
    with Image.open(out / "colour.jpg") as written:
        assert written.getexif()[DATE_TAG] == "2001:02:03 04:05:06"
        assert np.asarray(written).std(axis=-1).mean() > 0.5, "coloured, not grey"
    manifest = read_colorized_manifest(manifest_path(out, 0))
    assert (
        len(manifest) == photos
        and manifest.set_index("path").loc["colour.jpg", "tags"] != (manifest.set_index("path").loc["grey.png", "tags"])
    ), "the photo's own tags were read"

    second = colour(scan())
    assert (second["coloured"].value, second["up_to_date"].value) == (0, photos)

    (root / "added.png").write_bytes((root / "grey.png").read_bytes())
    (root / "grey.png").write_bytes(jpeg_with_exif(np.full((10, 12, 3), 60, np.uint8), orientation=1))
    third = colour(scan())
    assert (third["coloured"].value, third["up_to_date"].value) == (2, photos - 1)
    assert (out / "added.jpg").is_file()
    with Image.open(out / "grey.jpg") as written:
        assert written.size == (12, 10), "the changed photo coloured anew"
