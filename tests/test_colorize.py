"""Colouring user photos of any size with a tiny trained checkpoint: size and lightness kept, CLI behaviour."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from model.colorize import (
    GRID_NAME,
    GRID_TILE,
    SUFFIX,
    BatchColourer,
    colorize_image,
    main,
)
from model.data import tag_ids
from model.inference import Colorizer
from pipeline.core.color import rgb_to_lab_u8
from pipeline.core.contract import PAD_ID, TOKENS_PER_IMAGE
from pipeline.core.photos import center_square
from pipeline.core.render import CollageLayout
from pipeline.core.vocabulary import encode_tags, load_tag_encoding, parse_tags, tag_text

WIDTH, HEIGHT = 101, 67


def odd_photo() -> np.ndarray:
    """A 101×67 photo with a gradient, a saturated disc and pure black and white corners."""
    x = np.linspace(0, 255, WIDTH, dtype=np.float32)
    rgb = np.stack(np.broadcast_arrays(x[None, :], np.full((HEIGHT, 1), 120.0), x[::-1][None, :]), axis=-1)
    rgb = rgb.astype(np.uint8)
    cv2.circle(rgb, (50, 33), 20, (230, 30, 40), thickness=-1)
    rgb[:8, :8] = 0
    rgb[-8:, -8:] = 255
    return rgb


@pytest.fixture(scope="module")
def colorizer(tiny_checkpoint: Path) -> Colorizer:
    return Colorizer.from_checkpoint(tiny_checkpoint)


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, vocabulary_dir: Path) -> None:
    """The CLI finds the vocabulary where tiktoken's cache variable points."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(vocabulary_dir))


def test_colorize_keeps_size_and_lightness(colorizer: Colorizer, vocabulary_dir: Path) -> None:
    rgb = odd_photo()
    tokens, _ = encode_tags([tag_text(["red", "circle"])], load_tag_encoding(vocabulary_dir))
    coloured = colorize_image(rgb, colorizer, tokens[0])
    assert coloured.shape == rgb.shape and coloured.dtype == np.uint8
    lab_in, lab_out = rgb_to_lab_u8(rgb), rgb_to_lab_u8(coloured)
    assert np.abs(lab_out[..., 0].astype(int) - lab_in[..., 0]).max() <= 1
    assert np.abs(lab_out[..., 1:].astype(int) - 128).max() > 2, "the checkpoint added no colour at all"
    assert not np.array_equal(coloured, rgb)


def test_a_batch_of_photos_of_any_sizes_is_coloured_as_each_alone(
    tiny_checkpoint: Path, colorizer: Colorizer, cli_env: None
) -> None:
    colourer = BatchColourer(tiny_checkpoint)
    assert colourer.checkpoint_sha256 == hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()
    photos = [odd_photo(), np.ascontiguousarray(odd_photo()[:40, :90]), odd_photo()[::-1].copy()]
    tag_sets = [["red", "circle"], [], ["sea"]]
    batch = colourer.colour(photos, tag_sets)
    for rgb, tags, coloured in zip(photos, tag_sets, batch, strict=True):
        alone = colorize_image(rgb, colorizer, tag_ids(tags, colorizer.index))
        assert coloured.shape == rgb.shape and np.abs(coloured.astype(int) - alone).max() <= 1
    assert colourer.tag_key([]) == " ".join([str(PAD_ID)] * TOKENS_PER_IMAGE)
    assert colourer.tag_key(["red"]) != colourer.tag_key(["sea"])


def test_colorize_refuses_bad_tokens_and_images(colorizer: Colorizer) -> None:
    with pytest.raises(ValueError, match="tokens"):
        colorize_image(odd_photo(), colorizer, np.full(TOKENS_PER_IMAGE + 1, PAD_ID))
    with pytest.raises(ValueError, match="uint8 RGB"):
        colorize_image(odd_photo()[..., 0], colorizer, np.full(TOKENS_PER_IMAGE, PAD_ID))


def test_parse_tags() -> None:
    assert parse_tags(" red, sky\nsea,,  \n") == ["red", "sky", "sea"]
    assert parse_tags("") == []


def test_cli_colours_photos_at_their_size_and_upright(tmp_path: Path, tiny_checkpoint: Path, cli_env: None) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(odd_photo()).save(photos / "odd.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(odd_photo()).save(photos / "turned.jpg", exif=exif)
    out = tmp_path / "out"
    argv = [str(photos / "odd.png"), str(photos / "turned.jpg"), "--checkpoint", str(tiny_checkpoint)]
    assert main([*argv, "--tags", "red, circle", "--out", str(out)]) == 0
    with Image.open(out / f"odd{SUFFIX}") as image:
        assert image.size == (WIDTH, HEIGHT)
    with Image.open(out / f"turned{SUFFIX}") as image:
        assert image.size == (HEIGHT, WIDTH)
    assert sorted(p.name for p in out.iterdir()) == [f"odd{SUFFIX}", f"turned{SUFFIX}"]
    assert main([str(photos / "odd.png"), "--checkpoint", str(tiny_checkpoint)]) == 0
    assert (photos / f"odd{SUFFIX}").is_file()


def test_cli_colours_under_several_tag_sets_and_writes_a_grid(
    tmp_path: Path, tiny_checkpoint: Path, cli_env: None
) -> None:
    photos = [tmp_path / "wide.png", tmp_path / "tall.png"]
    Image.fromarray(odd_photo()).save(photos[0])
    Image.fromarray(odd_photo().transpose(1, 0, 2).copy()).save(photos[1])
    out = tmp_path / "out"
    tag_sets = ["red, circle", "blue", ""]
    argv = [*map(str, photos), "--checkpoint", str(tiny_checkpoint), "--out", str(out)]
    assert main([*argv, *(arg for tags in tag_sets for arg in ("--tags", tags))]) == 0
    singles = [f"{photo.stem}_color_{k}.png" for photo in photos for k in (1, 2, 3)]
    assert sorted(p.name for p in out.iterdir()) == sorted([*singles, GRID_NAME])
    colorizer = Colorizer.from_checkpoint(tiny_checkpoint)
    rgb = np.asarray(Image.open(photos[0]).convert("RGB"))
    expected = colorize_image(rgb, colorizer, tag_ids(["blue"], colorizer.index))
    np.testing.assert_array_equal(np.asarray(Image.open(out / "wide_color_2.png")), expected)
    layout = CollageLayout(tile=GRID_TILE, n_rows=len(photos), n_columns=1 + len(tag_sets))
    with Image.open(out / GRID_NAME) as grid:
        assert grid.size == (layout.width, layout.height)
        pixels = np.asarray(grid.convert("RGB"))
    x, y = layout.tile_origin(0, 2)  # the first photo under the second set, its centre square
    tile = Image.fromarray(center_square(expected)).resize((GRID_TILE, GRID_TILE), Image.Resampling.LANCZOS)
    np.testing.assert_array_equal(pixels[y : y + GRID_TILE, x : x + GRID_TILE], np.asarray(tile))


def test_cli_reports_bad_files_and_goes_on(
    tmp_path: Path, tiny_checkpoint: Path, cli_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.jpg").write_text("not a photo")
    Image.fromarray(odd_photo()).save(tmp_path / "good.png")
    images = [str(tmp_path / name) for name in ("missing.jpg", "notes.jpg", "good.png")]
    assert main([*images, "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "out")]) == 1
    errors = capsys.readouterr().err
    assert "missing.jpg: no such file" in errors
    assert "notes.jpg: not a readable image" in errors
    assert [p.name for p in (tmp_path / "out").iterdir()] == [f"good{SUFFIX}"]


def test_cli_refuses_a_device_this_torch_cannot_use_and_a_foreign_pickle(
    tmp_path: Path,
    tiny_checkpoint: Path,
    cli_env: None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    Image.fromarray(odd_photo()).save(tmp_path / "a.png")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "a.png"), "--checkpoint", str(tiny_checkpoint), "--device", "cuda"])
    assert exit_info.value.code == 2
    assert "device: cuda requested but this torch sees no GPU" in capsys.readouterr().err
    with (tmp_path / "foreign.pt").open("wb") as file:
        pickle.dump({"model": Path("weights")}, file)
    with pytest.raises(SystemExit):
        main([str(tmp_path / "a.png"), "--checkpoint", str(tmp_path / "foreign.pt")])
    err = capsys.readouterr().err
    assert "foreign.pt: not a readable checkpoint (UnpicklingError: Unsupported" in err
    assert "weights_only" not in err and len(err.strip().splitlines()) == 1


def test_cli_errors_on_a_missing_checkpoint_or_clashing_names(
    tmp_path: Path, cli_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "a.png"), "--checkpoint", str(tmp_path / "none.pt")])
    assert exit_info.value.code == 2
    assert "no such checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path / "x" / "a.png"), str(tmp_path / "y" / "a.jpg"), "--checkpoint", "c.pt", "--out", "o"])
    assert "several photos would be written" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not Path("o").exists()
