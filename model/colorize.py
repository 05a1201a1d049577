"""Colour your own photos with a trained checkpoint, at their full size.

    python -m model.colorize photo.jpg [more.jpg ...] --checkpoint data/sample/runs/sample_demo \\
        --tags "sunset, beach" [--tags "snow" ...] [--out DIR] [--device cpu]

The net sees the photo's lightness at its training size; its a, b are upsampled to the photo's size and
combined with the photo's own full-resolution lightness, so edges stay as sharp as in the input. Each
photo is written as ``<stem>_color.png`` (beside it, or in ``--out``), exactly as large as the input.

Several ``--tags`` steer the colours: each photo is coloured once per tag set (``<stem>_color_<k>.png``,
``k`` counting the sets from 1), and ``tag_grid.png`` shows every photo (rows) under every set (columns).
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from model.checkpoint import CheckpointError, run_checkpoint
from model.data import tag_ids
from model.device import resolve_device
from model.gamut import gamut_table, rgb_from_table, rgb_keeping_lightness
from model.inference import Colorizer
from pipeline.core.color import NEUTRAL_AB, lab_u8_to_rgb, rgb_to_lab_u8
from pipeline.core.config import ConfigError
from pipeline.core.files import atomic_path, file_digest
from pipeline.core.photos import center_square, srgb_pixels
from pipeline.core.render import CollageRow, render_collage
from pipeline.core.vocabulary import (
    VocabularyError,
    parse_tags,
)

SUFFIX = "_color.png"
GRID_NAME = "tag_grid.png"
GRID_TILE = 256


class ColorizeError(ValueError):
    """A photo cannot be read or written; the message names the file."""


def read_rgb(path: Path) -> np.ndarray:
    """A photo file as uint8 sRGB ``(H, W, 3)``, turned upright by its EXIF orientation, as conversion reads it."""
    if not path.is_file():
        raise ColorizeError(f"{path}: no such file")
    try:
        with Image.open(path) as image:
            return srgb_pixels(image)
    except (OSError, Image.DecompressionBombError) as error:
        raise ColorizeError(f"{path}: not a readable image ({error})") from error


def colorize_image(rgb: np.ndarray, colorizer: Colorizer, tokens: np.ndarray) -> np.ndarray:
    """Colour uint8 RGB ``(H, W, 3)`` of any size under raw tag ids ``tokens`` (:func:`tag_ids`); same size out.

    Only the lightness of ``rgb`` is used: a colour photo is coloured anew.
    """
    tokens = np.asarray(tokens, dtype=np.int32)
    if tokens.shape != (colorizer.index.width,):
        raise ValueError(f"expected one row of {colorizer.index.width} tokens, got shape {tokens.shape}")
    return colorize_images([rgb], colorizer, tokens[None])[0]


def check_rgb(rgb: np.ndarray) -> None:
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected uint8 RGB (H, W, 3), got {rgb.dtype} {rgb.shape}")


def colorize_images(
    photos: Sequence[np.ndarray], colorizer: Colorizer, tokens: np.ndarray, table: np.ndarray | None = None
) -> list[np.ndarray]:
    """Colour uint8 RGB photos of any sizes, each under its row of raw tag ids ``tokens`` ``(B, width)``: the net
    sees every photo's lightness at its training size in one batch; its a, b are upsampled to each photo's own
    size and joined to the photo's full-resolution lightness (through the Lab → RGB ``table`` where given)."""
    for rgb in photos:
        check_rgb(rgb)
    return _colour_labs([rgb_to_lab_u8(rgb) for rgb in photos], colorizer, tokens, table)


def colorize_under_tag_sets(rgb: np.ndarray, colorizer: Colorizer, tokens: np.ndarray) -> list[np.ndarray]:
    """One photo coloured under each row of raw tag ids ``tokens`` ``(K, width)``, as :func:`colorize_images`
    colours it, its Lab computed once."""
    check_rgb(rgb)
    lab = rgb_to_lab_u8(rgb)
    return _colour_labs([lab.copy() for _ in range(len(tokens))], colorizer, tokens)


def _colour_labs(
    labs: list[np.ndarray], colorizer: Colorizer, tokens: np.ndarray, table: np.ndarray | None = None
) -> list[np.ndarray]:
    """Each photo's Lab joined to the net's a, b, as RGB keeping its lightness: converted and checked per photo,
    or looked up in :func:`model.gamut.gamut_table` (the same pixels) when ``table`` is given."""
    size = colorizer.image_size
    small = np.stack(
        [cv2.resize(cv2.extractChannel(lab, 0), (size, size), interpolation=cv2.INTER_AREA) for lab in labs]
    )
    ab_small = colorizer.predict_ab(small, np.asarray(tokens, dtype=np.int32))
    coloured = []
    for lab, ab in zip(labs, ab_small, strict=True):
        height, width = lab.shape[:2]
        ab = cv2.resize(ab, (width, height), interpolation=cv2.INTER_CUBIC)
        if table is not None:
            coloured.append(rgb_from_table(lab, ab, table))
            continue
        cv2.mixChannels([ab], [lab], [0, 1, 1, 2])  # the photo's own L stays; its a, b give way to the net's
        coloured.append(rgb_keeping_lightness(lab))
    return coloured


class BatchColourer:
    """One checkpoint as :class:`pipeline.colorized.Colourer` wants it: its SHA-256, the key of a tag set (the
    ids it reads) and batches of photos coloured under their tags."""

    def __init__(self, checkpoint: Path, device: str = "cpu") -> None:
        self.checkpoint = Path(checkpoint)
        self.colorizer = Colorizer.from_checkpoint(self.checkpoint, device=str(resolve_device(device)))
        self.checkpoint_sha256 = file_digest(self.checkpoint, "sha256")
        self.step = self.colorizer.step
        self._ids = functools.lru_cache(maxsize=4096)(self._tag_ids)  # a folder repeats its tag sets

    def _tag_ids(self, tags: tuple[str, ...]) -> np.ndarray:
        return tag_ids(list(tags), self.colorizer.index)

    def tag_key(self, tags: Sequence[str]) -> str:
        return " ".join(str(int(i)) for i in self._ids(tuple(tags)))

    def colour(self, photos: Sequence[np.ndarray], tags: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """Many photos: through the Lab → RGB table (built or loaded on the first batch)."""
        tokens = np.stack([self._ids(tuple(tag_set)) for tag_set in tags])
        return colorize_images(photos, self.colorizer, tokens, gamut_table())


def write_png(rgb: np.ndarray, path: Path) -> Path:
    """Write uint8 RGB as PNG, atomically."""
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(rgb, mode="RGB").save(tmp, format="PNG")
    return path


def output_path(image: Path, out_dir: Path | None, tag_set: int | None = None) -> Path:
    """``<stem>_color.png`` (``<stem>_color_<k>.png`` for the ``k``-th of several tag sets) in ``out_dir``, or
    beside the photo."""
    stem = f"{image.stem}{SUFFIX}" if tag_set is None else f"{image.stem}_color_{tag_set}.png"
    return (out_dir or image.parent) / stem


def grey_rgb(rgb: np.ndarray) -> np.ndarray:
    """The photo as the net sees it: its lightness alone, a and b neutral."""
    lab = rgb_to_lab_u8(rgb)
    lab[..., 1:] = NEUTRAL_AB
    return lab_u8_to_rgb(lab)


def write_grid(rows: list[tuple[Path, np.ndarray, list[np.ndarray]]], tag_sets: list[str], path: Path) -> Path:
    """Photos (rows: name, input, one colouring per tag set) under every tag set (columns), as one collage."""
    collage_rows = [
        CollageRow((center_square(grey_rgb(rgb)), *map(center_square, colourings)), image.name)
        for image, rgb, colourings in rows
    ]
    titles = ("grey input", *(text or "no tags" for text in tag_sets))
    return render_collage(collage_rows, path, tile=GRID_TILE, columns=titles)


def main(argv: Sequence[str] | None = None) -> int:
    """Colour each photo; a photo that fails is reported and skipped. Exit status 1 if any failed."""
    parser = argparse.ArgumentParser(prog="python -m model.colorize", description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="photos to colour (any size)")
    parser.add_argument(
        "--checkpoint", required=True, type=Path, help="a checkpoint (.pt), or a run: its best.pt, else latest.pt"
    )
    parser.add_argument(
        "--tags",
        action="append",
        help='tags separated by commas or newlines, e.g. "sunset, beach"; repeat to compare several sets',
    )
    parser.add_argument("--out", type=Path, help="output directory (default: beside each photo)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    args = parser.parse_args(argv)
    tag_sets: list[str] = args.tags or [""]
    several = len(tag_sets) > 1

    targets = [
        [output_path(image, args.out, k + 1 if several else None) for k in range(len(tag_sets))]
        for image in args.images
    ]
    flat = [target for per_image in targets for target in per_image]
    clashes = sorted({str(t) for t in flat if flat.count(t) > 1})
    if clashes:
        parser.error(f"several photos would be written to {', '.join(clashes)}; use distinct names")
    try:
        device = resolve_device(args.device)
    except ConfigError as error:
        parser.error(str(error))
    try:
        checkpoint = run_checkpoint(args.checkpoint) if args.checkpoint.is_dir() else args.checkpoint
        colorizer = Colorizer.from_checkpoint(checkpoint, device=str(device))
        print(f"colouring with {checkpoint} (step {colorizer.step})", file=sys.stderr)
        tokens = [tag_ids(parse_tags(text), colorizer.index) for text in tag_sets]
    except (CheckpointError, VocabularyError, FileNotFoundError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")

    failed = 0
    grid_rows = []
    for image, per_image in zip(args.images, targets, strict=True):
        try:
            rgb = read_rgb(image)
            coloured = colorize_under_tag_sets(rgb, colorizer, np.stack(tokens))
            for result, target in zip(coloured, per_image, strict=True):
                print(write_png(result, target))
            grid_rows.append((image, rgb, coloured))
        except (ColorizeError, OSError) as error:
            print(f"{parser.prog}: error: {error}", file=sys.stderr)
            failed += 1
    if several and grid_rows:
        print(write_grid(grid_rows, tag_sets, (args.out or args.images[0].parent) / GRID_NAME))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
