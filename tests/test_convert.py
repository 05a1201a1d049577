"""pipeline.convert: photos in MIRFLICKR-1M-layout zips → Lab shards and images.parquet rows."""

from __future__ import annotations

import dataclasses
import io
import os
import re
import shutil
import time
import types
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image
from skimage.color import rgb2lab

import pipeline.convert as convert
from pipeline.convert import (
    ShardResult,
    convert_shard,
    convert_shards,
    decode_to_lab,
    shard_tag_counts,
)
from pipeline.core.color import colorfulness
from pipeline.core.layout import DataError, DatasetPaths, read_images_table
from pipeline.core.vocabulary import load_tag_encoding
from pipeline.datasets import DatasetSpec, load_dataset_spec
from pipeline.sources import base
from pipeline.sources.base import PhotoUnavailable
from pipeline.sources.zips import is_unsafe_member
from pipeline.tokens import build_tag_tokens
from tests.helpers import (
    BAD,
    CMYK,
    CORRUPT,
    EMPTY,
    GREY,
    LARGE,
    MISSING,
    NEUTRAL,
    PNG,
    PORTRAIT,
    SMALL,
    SPEC,
    TAGS,
    TRUNCATED,
    UNSAFE,
    UNSAFE_TAGS,
    encoded,
    photos,
    picture,
    write_raw,
)

SIZE = 32


def convert_one(spec: DatasetSpec, paths: DatasetPaths, shard: int, vocabulary_dir: Path) -> ShardResult:
    """One shard converted in this process, its tag counts read as ``convert_shards`` reads them."""
    ((_, counts),) = shard_tag_counts(spec, paths, [shard], vocabulary_dir)
    return convert_shard(spec, paths, shard, counts)


def reference_lab(
    data: bytes, size: int = SIZE, interpolation: int = cv2.INTER_LINEAR
) -> tuple[np.ndarray, np.ndarray]:
    """RGB and Lab of a photo computed without pipeline code: OpenCV full-size decode, then :func:`square_lab`."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    return square_lab(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), size, interpolation)


def square_lab(
    rgb: np.ndarray, size: int = SIZE, interpolation: int = cv2.INTER_LINEAR
) -> tuple[np.ndarray, np.ndarray]:
    """NumPy center crop, OpenCV resize of the crop alone (bilinear: the conversion's filter up to 2×), OpenCV Lab."""
    height, width = rgb.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    crop = np.ascontiguousarray(rgb[top : top + side, left : left + side])
    square = cv2.resize(crop, (size, size), interpolation=interpolation)
    return square, cv2.cvtColor(square, cv2.COLOR_RGB2LAB)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, vocabulary_dir: Path) -> tuple[DatasetPaths, list[ShardResult]]:
    """The test archives, every shard converted in this process."""
    paths = DatasetPaths(tmp_path_factory.mktemp("convert") / "sample")
    write_raw(paths, photos())
    return paths, [convert_one(SPEC, paths, shard, vocabulary_dir) for shard in range(SPEC.n_shards)]


def row_of(paths: DatasetPaths, image_id: int) -> np.ndarray:
    return np.load(paths.shard(image_id // SPEC.shard_size))[image_id % SPEC.shard_size]


def test_lab_contract_exact_and_close_to_float_reference(dataset: tuple[DatasetPaths, list[ShardResult]]) -> None:
    paths, _ = dataset
    rgb, lab = reference_lab(photos()[SMALL])
    np.testing.assert_array_equal(row_of(paths, SMALL), lab)
    exact = rgb2lab(rgb / 255.0)
    exact_u8 = np.stack([exact[..., 0] * 255.0 / 100.0, exact[..., 1] + 128.0, exact[..., 2] + 128.0], axis=-1)
    gap = np.abs(row_of(paths, SMALL).astype(np.float64) - exact_u8).mean(axis=(0, 1))
    assert (gap <= 1.0).all(), gap


def test_large_photo_is_decoded_reduced_but_close(dataset: tuple[DatasetPaths, list[ShardResult]]) -> None:
    paths, _ = dataset
    decoded = decode_to_lab(photos()[LARGE], SIZE)
    assert (decoded.width, decoded.height, decoded.format) == (300, 200, "JPEG")
    np.testing.assert_array_equal(row_of(paths, LARGE), decoded.lab)
    _, full = reference_lab(photos()[LARGE], interpolation=cv2.INTER_AREA)  # every pixel, exact area average
    assert not np.array_equal(decoded.lab, full), "a 300×200 photo should be DCT-scaled for a 32² target"
    assert np.abs(decoded.lab.astype(int) - full).mean() <= 1.5


def test_rows_stay_aligned_with_image_ids(dataset: tuple[DatasetPaths, list[ShardResult]]) -> None:
    paths, results = dataset
    shards = [np.load(paths.shard(shard)) for shard in range(SPEC.n_shards)]
    assert [s.shape for s in shards] == [(5, SIZE, SIZE, 3), (5, SIZE, SIZE, 3), (2, SIZE, SIZE, 3)]
    assert all(s.dtype == np.uint8 for s in shards)
    for image_id, data in photos().items():
        if image_id not in BAD:
            expected = decode_to_lab(data, SIZE).lab
            np.testing.assert_array_equal(shards[image_id // 5][image_id % 5], expected, err_msg=str(image_id))
    assert [(r.shard, r.n_images, r.path) for r in results] == [
        (s, len(SPEC.shard_ids(s)), paths.shard(s)) for s in range(3)
    ]


def test_bad_photos_keep_zero_rows_and_reasons(dataset: tuple[DatasetPaths, list[ShardResult]]) -> None:
    paths, results = dataset
    table = read_images_table(paths).set_index("image_id")
    for image_id, reason in BAD.items():
        assert not row_of(paths, image_id).any()
        assert not table.loc[image_id, "valid"]
        assert table.loc[image_id, "reason"] == reason
    assert tuple(table.loc[TRUNCATED, ["width", "height"]]) == (64, 48), "a truncated photo's size is known"
    assert (table.loc[[MISSING, EMPTY, CORRUPT], ["width", "height"]] == 0).all(axis=None)
    assert (table.loc[table["valid"], "reason"] == "").all()
    assert table["valid"].sum() == 12 - len(BAD)
    first, second, third = (r.reasons for r in results)
    assert first == {**dict.fromkeys(convert.COUNTED, 0), "not_jpeg": 1, "cmyk": 1, "unsafe_members": len(UNSAFE)}
    assert second == {**dict.fromkeys(convert.COUNTED, 0), **{reason: 1 for reason in BAD.values()}}
    assert not any(third.values())
    assert [r.n_valid for r in results] == [5, 1, 2]


def test_images_table_columns(dataset: tuple[DatasetPaths, list[ShardResult]], vocabulary_dir: Path) -> None:
    paths, results = dataset
    schema = pq.read_schema(paths.shard_rows(0))
    assert schema == convert.ROWS_SCHEMA.with_metadata(schema.metadata)
    table = read_images_table(paths)
    assert table["image_id"].tolist() == list(range(12))
    assert table["shard"].tolist() == [i // 5 for i in range(12)]
    assert table["row"].tolist() == [i % 5 for i in range(12)]
    encoding = load_tag_encoding(vocabulary_dir)
    expected = {i: TAGS.get(i, (b"", []))[1] for i in range(12)}
    assert table["n_tags"].tolist() == [len(expected[i]) for i in range(12)]
    assert table["n_tokens"].tolist() == [len(encoding.encode_ordinary(" ".join(expected[i]))) for i in range(12)]
    assert table.loc[TRUNCATED, "n_tokens"] > 20, "n_tokens counts every token, not only the 20 kept"
    assert table.loc[SMALL, ["width", "height"]].tolist() == [60, 44]
    assert table.loc[PORTRAIT, ["width", "height"]].tolist() == [40, 70]
    assert table["is_grayscale"].tolist() == [i in (GREY, NEUTRAL) for i in range(12)], "a sepia print is colour"
    rgb, _ = reference_lab(photos()[SMALL])
    assert table.loc[SMALL, "colorfulness"] == pytest.approx(colorfulness(rgb), rel=1e-5)
    assert table.loc[GREY, "colorfulness"] == pytest.approx(0.0, abs=1e-6)
    assert (table.loc[table["valid"] & ~table["is_grayscale"], "colorfulness"] > 5).all()
    assert (table.loc[~table["valid"], ["colorfulness"]] == 0).all(axis=None)
    assert [r.n_grayscale for r in results] == [1, 0, 1]
    valid = table[table["valid"]]
    for result in results:
        assert result.mean_colorfulness == pytest.approx(valid[valid["shard"] == result.shard]["colorfulness"].mean())


def test_cmyk_png_and_greyscale_are_converted(dataset: tuple[DatasetPaths, list[ShardResult]]) -> None:
    paths, _ = dataset
    _, source = square_lab(picture(3, 48, 40))
    gap = np.abs(row_of(paths, CMYK).astype(int) - source).mean(axis=(0, 1))
    assert (gap < 3.0).all(), f"{gap}: inverted CMYK would be 25+ levels off"
    png = decode_to_lab(photos()[PNG], SIZE)
    assert (png.format, png.is_jpeg) == ("PNG", False)
    np.testing.assert_array_equal(png.lab, square_lab(picture(4, 40, 40))[1])
    grey = row_of(paths, GREY)
    assert np.abs(grey[..., 1:].astype(int) - 128).max() <= 1


def test_decode_to_lab_edge_cases(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(PhotoUnavailable) as error:
        decode_to_lab(b"", SIZE)
    assert (error.value.reason, error.value.width) == ("empty", 0)
    clear = np.zeros((40, 40, 4), dtype=np.uint8)
    np.testing.assert_array_equal(decode_to_lab(encoded(Image.fromarray(clear), "PNG"), 8).lab[..., 0], 255)
    deep = picture(8, 40, 40)[..., 0].astype(np.uint16) * 257
    grey16 = decode_to_lab(encoded(Image.fromarray(deep), "PNG"), 40)
    np.testing.assert_array_equal(grey16.rgb[..., 0], deep // 257)
    palette = Image.fromarray(picture(9, 40, 40)).convert("P")
    np.testing.assert_array_equal(decode_to_lab(encoded(palette, "PNG"), 40).rgb, np.asarray(palette.convert("RGB")))
    with pytest.raises(PhotoUnavailable) as error:
        decode_to_lab(encoded(Image.fromarray(picture(10, 40, 40)), "ICO"), SIZE)
    assert error.value.reason == "undecodable"
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(PhotoUnavailable) as error:
        decode_to_lab(photos()[SMALL], SIZE)
    assert error.value.reason == "too_large"


def test_a_scan_broken_by_a_stray_marker_is_refused() -> None:
    """OpenCV alone fills the rest of such a scan with grey and returns it; the photo is refused instead, as
    Pillow's decoder refuses it, while intact photos (one scan or progressive) decode to Pillow's pixels."""
    whole = encoded(Image.fromarray(picture(11, 96, 64)))
    scan = whole.index(b"\xff\xda")  # no EXIF thumbnail here: the first scan marker is the photo's
    middle = (scan + len(whole)) // 2
    broken = whole[:middle] + b"\xff\x3c\x00\x04\x12\x34" + whole[middle:]
    assert cv2.imdecode(np.frombuffer(broken, np.uint8), cv2.IMREAD_COLOR_RGB) is not None
    with pytest.raises(OSError), Image.open(io.BytesIO(broken)) as image:
        image.load()
    with pytest.raises(PhotoUnavailable) as error:
        decode_to_lab(broken, 64)
    assert error.value.reason == "undecodable" and (error.value.width, error.value.height) == (96, 64)
    for intact in (whole, encoded(Image.fromarray(picture(11, 96, 64)), progressive=True)):
        with Image.open(io.BytesIO(intact)) as image:
            pillow = np.asarray(image.crop((16, 0, 80, 64)))
        np.testing.assert_array_equal(decode_to_lab(intact, 64).rgb, pillow)


def test_unsafe_members_are_counted_never_read(
    tmp_path: Path, vocabulary_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert [is_unsafe_member(name) for name in (*UNSAFE, "/abs.jpg", "C:/x.jpg", "a\\..\\..\\b.jpg")] == [True] * 5
    assert not any(map(is_unsafe_member, ("images/0/1.jpg", "a..b/c.jpg", "images/0/..jpg")))
    opened: list[str] = []
    original = zipfile.ZipFile.open

    def spy(self: zipfile.ZipFile, name: str | zipfile.ZipInfo, *args: object, **kwargs: object) -> object:
        opened.append(name.filename if isinstance(name, zipfile.ZipInfo) else name)
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", spy)
    paths = DatasetPaths(tmp_path / "sample")
    write_raw(paths, photos())
    opened.clear()
    assert build_tag_tokens(SPEC, paths, load_tag_encoding(vocabulary_dir)).unsafe_members == len(UNSAFE_TAGS)
    result = convert_one(SPEC, paths, 0, vocabulary_dir)
    assert result.reasons["unsafe_members"] == len(UNSAFE), "the tag archive's are counted by tag_tokens"
    assert opened and not any(map(is_unsafe_member, opened))
    assert read_images_table(paths)["n_tags"].tolist() == [len(TAGS[i][1]) for i in SPEC.shard_ids(0)]


def test_oversized_and_damaged_members(tmp_path: Path, vocabulary_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = DatasetPaths(tmp_path / "sample")
    write_raw(paths, photos())
    member = SPEC.image_member(SMALL)
    with zipfile.ZipFile(paths.archive("images0")) as archive:
        info = archive.getinfo(member)
    with paths.archive("images0").open("r+b") as file:
        file.seek(info.header_offset + 30 + len(info.filename.encode()) + 100)
        byte = file.read(1)
        file.seek(-1, io.SEEK_CUR)
        file.write(bytes([byte[0] ^ 0xFF]))
    result = convert_one(SPEC, paths, 0, vocabulary_dir)
    assert result.reasons["bad_member"] == 1
    assert read_images_table(paths).set_index("image_id").loc[SMALL, "reason"] == "bad_member"
    assert len(photos()[LARGE]) == max(len(photos()[i]) for i in SPEC.shard_ids(0))
    monkeypatch.setattr(base, "MAX_PHOTO_BYTES", len(photos()[LARGE]) - 1)
    result = convert_one(SPEC, paths, 0, vocabulary_dir)
    assert (result.reasons["too_large"], result.reasons["bad_member"], result.n_valid) == (1, 1, 3)


def listing(paths: DatasetPaths) -> list[str]:
    return sorted(str(p.relative_to(paths.root)) for p in paths.root.rglob("*") if p.is_file() and "raw" not in p.parts)


def test_rerun_replaces_shard_atomically(tmp_path: Path, vocabulary_dir: Path) -> None:
    paths = DatasetPaths(tmp_path / "sample")
    write_raw(paths, photos())
    convert_one(SPEC, paths, 1, vocabulary_dir)
    before = paths.shard(1).stat().st_ino, paths.shard_rows(1).stat().st_ino
    assert not np.load(paths.shard(1))[CORRUPT - 5].any()
    write_raw(paths, {**photos(), CORRUPT: photos()[NEUTRAL]})
    result = convert_one(SPEC, paths, 1, vocabulary_dir)
    assert (paths.shard(1).stat().st_ino, paths.shard_rows(1).stat().st_ino) != before
    np.testing.assert_array_equal(np.load(paths.shard(1))[CORRUPT - 5], decode_to_lab(photos()[NEUTRAL], SIZE).lab)
    assert result.reasons["undecodable"] == 0 and read_images_table(paths).set_index("image_id").loc[CORRUPT, "valid"]
    assert listing(paths) == ["images.parquet/001.parquet", "shards/lab_001.npy"]


def test_reconverting_a_shard_sweeps_what_a_killed_run_left(tmp_path: Path, vocabulary_dir: Path) -> None:
    paths = DatasetPaths(tmp_path / "sample")
    write_raw(paths, photos())
    paths.shards.mkdir(parents=True)
    left = [paths.shards / ".lab_001.npy.k1ll3d_0.tmp.npy", paths.shards / ".lab_000.npy.k1ll3d_0.tmp.npy"]
    for path in left:
        path.write_bytes(b"half a shard")
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    convert_one(SPEC, paths, 1, vocabulary_dir)
    assert not left[0].exists(), "shard 1's own stale temporary is gone"
    assert left[1].exists(), "shard 0's waits for shard 0's next conversion"
    convert_one(SPEC, paths, 0, vocabulary_dir)
    assert listing(paths) == [
        f"{d}/{name}"
        for d, name in [
            ("images.parquet", "000.parquet"),
            ("images.parquet", "001.parquet"),
            ("shards", "lab_000.npy"),
            ("shards", "lab_001.npy"),
        ]
    ]


def test_failure_mid_shard_leaves_no_file(
    tmp_path: Path, vocabulary_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = DatasetPaths(tmp_path / "sample")
    write_raw(paths, photos())
    convert_one(SPEC, paths, 1, vocabulary_dir)
    kept = paths.shard(1).read_bytes(), paths.shard_rows(1).read_bytes()
    calls: list[int] = []

    def failing(data: bytes, size: int) -> convert.DecodedImage:
        calls.append(size)
        if len(calls) == 3:
            raise RuntimeError("worker killed")
        return decode_to_lab(data, size)

    monkeypatch.setattr(convert, "decode_to_lab", failing)
    for shard in (0, 1):
        calls.clear()
        with pytest.raises(RuntimeError, match="worker killed"):
            convert_one(SPEC, paths, shard, vocabulary_dir)
    assert (paths.shard(1).read_bytes(), paths.shard_rows(1).read_bytes()) == kept
    assert listing(paths) == ["images.parquet/001.parquet", "shards/lab_001.npy"]


def test_convert_shards_parallel_matches_serial(
    dataset: tuple[DatasetPaths, list[ShardResult]], tmp_path: Path, vocabulary_dir: Path
) -> None:
    reference, serial_results = dataset
    outputs = {}
    for workers in (1, 2):
        paths = DatasetPaths(tmp_path / f"workers{workers}")
        shutil.copytree(reference.raw, paths.raw)
        reported: list[ShardResult] = []
        results = convert_shards(SPEC, paths, [2, 0, 1, 0], vocabulary_dir, workers=workers, progress=reported.append)
        assert [r.shard for r in results] == [2, 0, 1]
        assert sorted(r.shard for r in reported) == [0, 1, 2]
        assert [dataclasses.replace(r, seconds=0, path=reference.shard(r.shard)) for r in results] == [
            dataclasses.replace(serial_results[s], seconds=0) for s in (2, 0, 1)
        ]
        outputs[workers] = paths
    for shard in range(SPEC.n_shards):
        expected = reference.shard(shard).read_bytes()
        assert outputs[1].shard(shard).read_bytes() == expected == outputs[2].shard(shard).read_bytes()
    for paths in outputs.values():
        pd.testing.assert_frame_equal(read_images_table(paths), read_images_table(reference))
    assert convert_shards(SPEC, reference, [], vocabulary_dir) == []


def test_missing_inputs_are_named(tmp_path: Path, vocabulary_dir: Path) -> None:
    paths = DatasetPaths(tmp_path / "sample")
    write_raw(paths, photos())
    assert convert_one(SPEC, paths, 0, vocabulary_dir).n_valid == 5, "no tokens.npy or tags.parquet is needed"
    paths.archive("tags").unlink()
    with pytest.raises(FileNotFoundError, match=r"tags\.zip not found: materialize sample/tags_archive first"):
        convert_one(SPEC, paths, 1, vocabulary_dir)
    with pytest.raises(FileNotFoundError, match=r"tags\.zip not found: materialize sample/tags_archive first"):
        convert_shards(SPEC, paths, [1], vocabulary_dir, workers=1)
    write_raw(paths, photos())
    paths.archive("images0").unlink()
    with pytest.raises(FileNotFoundError, match=r"images0\.zip not found: materialize sample/archives first"):
        convert_one(SPEC, paths, 0, vocabulary_dir)
    counts = convert.TagCounts(np.zeros(4, np.int32), np.zeros(4, np.int32))
    with pytest.raises(ValueError, match="tag counts for 4 images, the shard holds 5"):
        convert_shard(SPEC, paths, 0, counts)
    assert listing(paths) == ["images.parquet/000.parquet", "shards/lab_000.npy"], "shard 0 kept, nothing half made"


def test_a_disk_too_small_is_refused_before_anything_is_written(
    tmp_path: Path, vocabulary_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = DatasetPaths(tmp_path / "sample")
    write_raw(paths, photos())
    monkeypatch.setattr(convert, "SHARD_SPACE_MARGIN", 1000)
    need = 12 * SIZE * SIZE * 3 + 3 * 1000  # every row of the 3 shards, and their margins
    free = need // 2
    monkeypatch.setattr(shutil, "disk_usage", lambda path: types.SimpleNamespace(free=free))
    message = re.escape(f"{paths.shards}: 3 shard(s) of 12 photos need 39.9 kB of disk space and 19.9 kB is free; ")
    with pytest.raises(DataError, match=f"^{message}"):
        convert_shards(SPEC, paths, [0, 1, 2], vocabulary_dir, workers=1)
    assert listing(paths) == [] and not paths.shards.exists()
    free = need - 1
    with pytest.raises(DataError):
        convert_shards(SPEC, paths, [0, 1, 2], vocabulary_dir, workers=1)
    free = need
    assert [r.n_valid for r in convert_shards(SPEC, paths, [0, 1, 2], vocabulary_dir, workers=1)] == [5, 1, 2]
    sizes = [paths.shard(shard).stat().st_blocks * 512 for shard in range(3)]
    assert 0 < sum(sizes) < need
    for workers in (1, 2):
        # The files it replaces count as free, but each worker's temporary sits beside one until it replaces it.
        free = need - sum(sizes) + workers * max(sizes) - 1
        with pytest.raises(DataError):
            convert_shards(SPEC, paths, [0, 1, 2], vocabulary_dir, workers=workers)
        free += 1
        assert len(convert_shards(SPEC, paths, [0, 1, 2], vocabulary_dir, workers=workers)) == 3


def test_rows_reach_the_file_as_they_are_converted(
    tmp_path: Path, vocabulary_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Memory stays bounded whatever the shard size: nothing is mapped, and each photo's row is in the file
    before the next photo is decoded."""
    spec = dataclasses.replace(SPEC, image_size=64)  # rows larger than a file buffer: written through at once
    paths = DatasetPaths(tmp_path / "sample")
    write_raw(paths, photos())
    rows_in_file: list[int] = []

    def counting(data: bytes, size: int) -> convert.DecodedImage:
        (shard,) = paths.shards.glob(".lab_000.npy.*.tmp.npy")
        rows_in_file.append(int(np.load(shard).any(axis=(1, 2, 3)).sum()))
        return decode_to_lab(data, size)

    monkeypatch.setattr(np, "memmap", None)
    monkeypatch.setattr(convert, "decode_to_lab", counting)
    assert convert_one(spec, paths, 0, vocabulary_dir).n_valid == 5
    assert rows_in_file == [0, 1, 2, 3, 4]


def test_mirflickr25k_layout_reads_photos_and_tags_from_one_archive(tmp_path: Path, vocabulary_dir: Path) -> None:
    spec = dataclasses.replace(load_dataset_spec("mirflickr25k"), n_images=3, shard_size=2, image_size=SIZE)
    paths = DatasetPaths(tmp_path / "mirflickr25k")
    paths.raw.mkdir(parents=True)
    with zipfile.ZipFile(paths.archive("mirflickr25k"), "w") as archive:
        for image_id in range(3):
            archive.writestr(spec.image_member(image_id), photos()[SMALL])
            archive.writestr(spec.tag_member(image_id), "sky\n" * image_id)
        archive.writestr("../evil.jpg", photos()[SMALL])
    results = [convert_one(spec, paths, shard, vocabulary_dir) for shard in range(spec.n_shards)]
    assert [(r.n_images, r.n_valid, r.reasons["unsafe_members"]) for r in results] == [(2, 2, 1), (1, 1, 0)]
    assert read_images_table(paths)["n_tags"].tolist() == [0, 1, 2]
    np.testing.assert_array_equal(np.load(paths.shard(1))[0], reference_lab(photos()[SMALL])[1])


def icc_rgb_profile(red: tuple, green: tuple, blue: tuple, gamma: float = 2.2) -> bytes:
    """A minimal ICC v2 RGB matrix/TRC display profile with the given D50 colorants (XYZ)."""

    def s15(value: float) -> bytes:
        return round(value * 65536).to_bytes(4, "big", signed=True)

    def xyz(values: tuple) -> bytes:
        return b"XYZ \0\0\0\0" + b"".join(s15(v) for v in values)

    curve = b"curv\0\0\0\0" + (1).to_bytes(4, "big") + round(gamma * 256).to_bytes(2, "big") + b"\0\0"
    tags = [
        (b"wtpt", xyz((0.9642, 1.0, 0.8249))),
        (b"rXYZ", xyz(red)),
        (b"gXYZ", xyz(green)),
        (b"bXYZ", xyz(blue)),
        (b"rTRC", curve),
        (b"gTRC", curve),
        (b"bTRC", curve),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for signature, body in tags:
        table += signature + (offset + len(data)).to_bytes(4, "big") + len(body).to_bytes(4, "big")
        data += body
    size = offset + len(data)
    header = (
        size.to_bytes(4, "big")
        + b"\0" * 4
        + bytes([2, 0x10, 0, 0])
        + b"mntrRGB XYZ "
        + b"\0" * 12
        + b"acsp"
        + b"\0" * 24
        + b"\0" * 4
        + s15(0.9642)
        + s15(1.0)
        + s15(0.8249)
        + b"\0" * 48
    )
    return header + len(tags).to_bytes(4, "big") + table + data


SRGB_RED, SRGB_GREEN, SRGB_BLUE = (0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), (0.1431, 0.0606, 0.7141)


def png(image: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


def test_exif_orientation_turns_the_photo_upright() -> None:
    stored = np.zeros((40, 60, 3), np.uint8)
    stored[:, :30] = (200, 30, 30)
    stored[:, 30:] = (30, 30, 200)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: shown rotated 90° clockwise
    turned = decode_to_lab(png(Image.fromarray(stored), exif=exif.tobytes()), SIZE)
    upright = np.ascontiguousarray(np.rot90(stored, k=-1))
    expected = decode_to_lab(png(Image.fromarray(upright)), SIZE)
    np.testing.assert_array_equal(turned.lab, expected.lab)
    assert (turned.width, turned.height, turned.rotated) == (40, 60, True)
    assert not expected.rotated
    as_stored = decode_to_lab(encoded(Image.fromarray(stored)), SIZE)
    turned = decode_to_lab(encoded(Image.fromarray(stored), exif=exif.tobytes()), SIZE)  # OpenCV decodes JPEGs
    np.testing.assert_array_equal(turned.lab, np.rot90(as_stored.lab, k=-1), err_msg="turned once, not twice")
    assert (turned.width, turned.height, turned.rotated) == (40, 60, True)


def test_an_embedded_icc_profile_is_converted_to_srgb() -> None:
    red = Image.new("RGB", (32, 32), (255, 0, 0))
    plain = decode_to_lab(png(red), SIZE)
    assert tuple(plain.rgb[0, 0]) == (255, 0, 0) and not plain.icc_converted
    swapped = icc_rgb_profile(SRGB_BLUE, SRGB_GREEN, SRGB_RED)  # this profile's "red" is sRGB's blue
    converted = decode_to_lab(png(red, icc_profile=swapped), SIZE)
    assert converted.icc_converted
    assert np.abs(converted.rgb[0, 0].astype(int) - (0, 0, 255)).max() <= 3
    same = decode_to_lab(png(red, icc_profile=icc_rgb_profile(SRGB_RED, SRGB_GREEN, SRGB_BLUE)), SIZE)
    assert np.abs(same.rgb.astype(int) - plain.rgb).max() <= 6, "a profile close to sRGB keeps the colours"
    damaged = decode_to_lab(png(red, icc_profile=b"not a profile"), SIZE)
    assert not damaged.icc_converted and tuple(damaged.rgb[0, 0]) == (255, 0, 0), "taken as sRGB"
    jpeg = decode_to_lab(encoded(red, icc_profile=swapped), SIZE)
    assert jpeg.icc_converted and np.abs(jpeg.rgb.astype(int) - (0, 0, 255)).max() <= 6


def test_heic_needs_pillow_heif() -> None:
    heic = b"\0\0\0\x18ftypheic" + b"\0" * 64
    with pytest.raises(PhotoUnavailable) as error:
        decode_to_lab(heic, SIZE)
    assert error.value.reason == ("unsupported" if convert.pillow_heif is None else "undecodable")
