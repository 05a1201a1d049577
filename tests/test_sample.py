"""The synthetic sample: deterministic 1M-layout archives whose colour lives in the tags, not in L."""

from __future__ import annotations

import hashlib
import itertools
import zipfile
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.core.color import rgb_to_lab_u8
from pipeline.core.config import ConfigError
from pipeline.core.layout import DatasetPaths
from pipeline.datasets import load_dataset_spec
from pipeline.sources.synthetic import (
    COLOURS,
    FOREGROUND_L,
    Spec,
    render_scene,
    sample_image,
    sample_tags,
    write_image_archive,
    write_tags_archive,
)

N_IMAGES = 40
WIDTH, HEIGHT = 96, 64
GREY_TAGS = {"bw", "blackandwhite"}


def small_spec(seed: int = 0, n_images: int = N_IMAGES) -> Spec:
    return replace(load_dataset_spec("sample"), n_images=n_images, seed=seed, width=WIDTH, height=HEIGHT)


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    raw = tmp_path_factory.mktemp("raw")
    spec = small_spec()
    assert write_image_archive(spec, "images0", raw / "images0.zip") == N_IMAGES
    assert write_tags_archive(spec, raw / "tags.zip") == N_IMAGES
    return raw / "images0.zip", raw / "tags.zip"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def chroma_of(lab: np.ndarray) -> np.ndarray:
    return np.hypot(lab[..., 1].astype(np.float32) - 128, lab[..., 2].astype(np.float32) - 128)


def decode(data: bytes) -> np.ndarray:
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    assert bgr is not None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_tags(tags_zip: Path) -> dict[str, list[str]]:
    with zipfile.ZipFile(tags_zip) as archive:
        return {name: archive.read(name).decode("utf-8").splitlines() for name in archive.namelist()}


def test_archives_are_byte_for_byte_deterministic(archives: tuple[Path, Path], tmp_path: Path) -> None:
    images, tags = archives
    assert write_image_archive(small_spec(), "images0", tmp_path / "again" / "images0.zip") == N_IMAGES
    write_tags_archive(small_spec(), tmp_path / "again" / "tags.zip")
    assert digest(tmp_path / "again" / "images0.zip") == digest(images)
    assert digest(tmp_path / "again" / "tags.zip") == digest(tags)
    assert sorted(path.name for path in (tmp_path / "again").iterdir()) == ["images0.zip", "tags.zip"]

    write_image_archive(small_spec(seed=1), "images0", tmp_path / "other" / "images0.zip")
    write_tags_archive(small_spec(seed=1), tmp_path / "other" / "tags.zip")
    assert digest(tmp_path / "other" / "images0.zip") != digest(images)
    assert digest(tmp_path / "other" / "tags.zip") != digest(tags)


def test_members_follow_the_1m_layout_and_decode(archives: tuple[Path, Path]) -> None:
    images, tags = archives
    layout = small_spec()
    with zipfile.ZipFile(images) as archive:
        infos = archive.infolist()
        assert [info.filename for info in infos] == [layout.image_member(i) for i in range(N_IMAGES)]
        assert {info.compress_type for info in infos} == {zipfile.ZIP_STORED}
        assert {info.date_time for info in infos} == {(1980, 1, 1, 0, 0, 0)}
        for info in infos:
            assert decode(archive.read(info)).shape == (HEIGHT, WIDTH, 3)
    with zipfile.ZipFile(tags) as archive:
        infos = archive.infolist()
        assert [info.filename for info in infos] == [layout.tag_member(i) for i in range(N_IMAGES)]
        assert {info.compress_type for info in infos} == {zipfile.ZIP_DEFLATED}
    tag_lists = list(read_tags(tags).values())
    assert any(not lines for lines in tag_lists)
    assert all(line.strip() == line and line for lines in tag_lists for line in lines)
    assert tag_lists == [sample_tags(small_spec(), i) for i in range(N_IMAGES)]


def test_colour_tag_names_the_foreground_colour(archives: tuple[Path, Path]) -> None:
    images, tags = archives
    spec = small_spec()
    checked = 0
    with zipfile.ZipFile(images) as archive:
        for image_id, lines in enumerate(read_tags(tags).values()):
            colours = [tag for tag in lines if tag in COLOURS]
            if not colours:
                continue
            assert len(colours) == 1
            lab = rgb_to_lab_u8(decode(archive.read(spec.image_member(image_id))))
            chromatic = chroma_of(lab) > 10
            assert 0.3 < chromatic.mean() < 0.75
            mean_ab = lab[chromatic][:, 1:].astype(np.float32).mean(axis=0) - 128
            assert np.abs(mean_ab - COLOURS[colours[0]]).max() < 6, (image_id, colours[0], mean_ab)
            nearest = min(COLOURS, key=lambda name: float(np.hypot(*(mean_ab - COLOURS[name]))))
            assert nearest == colours[0]
            checked += 1
    assert checked > N_IMAGES // 2


def test_greyscale_photos_are_tagged_bw_and_have_no_chroma() -> None:
    spec = small_spec()
    grey = [i for i in range(400) if GREY_TAGS & set(sample_tags(spec, i))][:3]
    assert grey
    for image_id in grey:
        assert not set(sample_tags(spec, image_id)) & set(COLOURS)
        rgb = sample_image(spec, image_id)
        assert chroma_of(rgb_to_lab_u8(rgb)).max() <= 1.5
        assert rgb.std() > 5


def test_lightness_does_not_depend_on_the_colour() -> None:
    spec = small_spec()
    for image_id in range(4):
        scenes = [rgb_to_lab_u8(render_scene(spec, image_id, colour)) for colour in [*COLOURS, None]]
        lightness = np.stack([scene[..., 0].astype(np.int16) for scene in scenes])
        assert np.abs(lightness - lightness[-1]).max() <= 2
        mean_ab = np.stack([scene[..., 1:].reshape(-1, 2).mean(axis=0) for scene in scenes])
        assert len({tuple(np.rint(ab)) for ab in mean_ab}) == len(scenes)


def test_colours_stay_in_gamut_and_apart() -> None:
    lightness = np.linspace(*FOREGROUND_L, 31, dtype=np.float32)
    for a, b in COLOURS.values():
        lab = np.stack([lightness, np.full_like(lightness, a), np.full_like(lightness, b)], axis=-1)[None]
        rgb = np.rint(cv2.cvtColor(lab, cv2.COLOR_Lab2RGB) * 255).astype(np.uint8)
        back = rgb_to_lab_u8(rgb).astype(np.float32)
        assert np.abs(back[..., 1:] - 128 - (a, b)).max() <= 1.5
    for (a1, b1), (a2, b2) in itertools.combinations(COLOURS.values(), 2):
        assert np.hypot(a1 - a2, b1 - b2) > 20
    assert len(COLOURS) >= 8


def test_tag_statistics_look_like_flickr() -> None:
    spec = load_dataset_spec("sample")
    tag_lists = [sample_tags(spec, i) for i in range(2000)]
    tagged = [tags for tags in tag_lists if tags]
    assert 0.05 < 1 - len(tagged) / len(tag_lists) < 0.11
    assert 0.03 < np.mean([len(tags) >= 30 for tags in tagged]) < 0.08
    assert all(1 <= len(tags) <= 10 or 30 <= len(tags) <= 60 for tags in tagged)
    assert 0.015 < np.mean([bool(GREY_TAGS & set(tags)) for tags in tagged]) < 0.05
    positions = [next(i for i, tag in enumerate(tags) if tag in COLOURS) for tags in tagged if set(tags) & set(COLOURS)]
    assert np.mean(np.array(positions) < 3) > 0.8
    counts = {colour: sum(colour in tags for tags in tagged) for colour in COLOURS}
    assert min(counts.values()) > 0.08 * len(positions)
    assert all(len(set(tags)) == len(tags) for tags in tagged)
    assert any(not tag.isascii() for tags in tagged for tag in tags)


def test_photos_depend_only_on_seed_and_id() -> None:
    small, large = small_spec(n_images=10), small_spec(n_images=500)
    assert sample_tags(small, 7) == sample_tags(large, 7)
    assert np.array_equal(sample_image(small, 7), sample_image(large, 7))
    assert not np.array_equal(sample_image(small, 7), sample_image(small, 8))


def test_second_image_archive_holds_ids_from_100000(tmp_path: Path) -> None:
    spec = small_spec(n_images=100_004)
    assert spec.archives() == ["images0", "images1"]
    assert spec.archive_ids("images0") == range(100_000)
    assert write_image_archive(spec, "images1", tmp_path / "images1.zip") == 4
    with zipfile.ZipFile(tmp_path / "images1.zip") as archive:
        assert archive.namelist() == [f"images/10/{i}.jpg" for i in range(100_000, 100_004)]
    with pytest.raises(ConfigError, match="images2"):
        spec.obtain("images2", DatasetPaths(tmp_path / "sample"), None, print)
    assert not (tmp_path / "sample").exists(), "nothing is written for an archive the dataset does not have"
