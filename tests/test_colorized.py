"""Colouring a folder's photos: output names that never meet, photos read whole with their EXIF, outputs and
their manifest written atomically."""

from __future__ import annotations

import io
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
    assert up_to_date(read.iloc[0], "s", "c", "1 2", "jpeg q95", tmp_path)
    assert not up_to_date(read.iloc[0], "t", "c", "1 2", "jpeg q95", tmp_path), "the photo changed"
    assert not up_to_date(read.iloc[0], "s", "d", "1 2", "jpeg q95", tmp_path), "another checkpoint"
    assert not up_to_date(read.iloc[0], "s", "c", "3", "jpeg q95", tmp_path), "other tags"
    assert not up_to_date(read.iloc[0], "s", "c", "1 2", "png", tmp_path), "other settings"
    (tmp_path / "a.jpg").unlink()
    assert not up_to_date(read.iloc[0], "s", "c", "1 2", "jpeg q95", tmp_path), "the output is gone"
    path.write_bytes(b"damaged")
    assert read_colorized_manifest(path).empty, "a damaged manifest colours everything again"
