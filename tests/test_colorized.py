"""Colouring a folder's photos: output names that never meet, photos read whole with their EXIF, outputs and
their manifest written atomically."""

from __future__ import annotations

import io
import os
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
