"""Result collages: one row per photo (grey input | generated | original, or any columns), its tags underneath.

The layout is computed from integers alone (tile size and row count), never from font metrics, so a
collage's pixel size is known in advance and the same on every machine.
"""

from __future__ import annotations

import base64
import bisect
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

from pipeline.core.files import atomic_path
from pipeline.core.fonts import FontChain, warn_missing

COLUMNS = ("grey input", "generated", "original")
ELLIPSIS = "…"
BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)


@dataclass(frozen=True)
class CollageRow:
    """One photo of a collage: a uint8 RGB ``(H, W, 3)`` image per column and its caption (the tags)."""

    images: tuple[np.ndarray, ...]
    caption: str


@dataclass(frozen=True)
class CollageLayout:
    """Pixel geometry of a collage: margins around and between tiles, a header, a caption line per row."""

    tile: int
    n_rows: int
    n_columns: int = len(COLUMNS)

    @property
    def margin(self) -> int:
        return max(4, self.tile // 28)

    @property
    def font_size(self) -> int:
        return max(10, self.tile // 14)

    @property
    def header_height(self) -> int:
        return self.font_size + self.margin

    @property
    def caption_height(self) -> int:
        return self.font_size + self.margin

    @property
    def width(self) -> int:
        return self.n_columns * self.tile + (self.n_columns + 1) * self.margin

    @property
    def height(self) -> int:
        return 2 * self.margin + self.header_height + self.n_rows * (self.tile + self.caption_height)

    def tile_origin(self, row: int, column: int) -> tuple[int, int]:
        """Top-left pixel ``(x, y)`` of a tile."""
        x = self.margin + column * (self.tile + self.margin)
        y = self.margin + self.header_height + row * (self.tile + self.caption_height)
        return x, y

    def caption_origin(self, row: int) -> tuple[int, int]:
        """Top-left pixel ``(x, y)`` of a row's caption line, just below its tiles."""
        x, y = self.tile_origin(row, 0)
        return x, y + self.tile + self.margin // 4


class Markdown(str):
    """Text meant to be rendered as Markdown (the Dagster layer shows it as such)."""


def preview_markdown(path: Path, title: str, width: int = 640) -> Markdown:
    """Markdown that shows the PNG at ``path`` inline: a JPEG copy at most ``width`` wide, as a data URI.

    The Dagster UI renders Markdown metadata in the browser, where a file path on the server would not load.
    """
    with Image.open(path) as image:
        scale = min(1.0, width / image.width)
        small = image.convert("RGB").resize((round(image.width * scale), round(image.height * scale)), Image.BOX)
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=80)
    return Markdown(f"![{title}](data:image/jpeg;base64,{base64.b64encode(buffer.getvalue()).decode()})")


_IMAGE_LINK = re.compile(r"!\[(?P<title>[^\]]*)\]\((?P<path>[^)\s:]+\.png)\)")


def inline_images(markdown: str, base: Path, width: int = 640) -> Markdown:
    """``markdown`` with each image it links by a relative path (under ``base``) embedded by
    :func:`preview_markdown`, so it renders where the files are not served, as in the Dagster UI; each image is
    capped at ``width`` pixels, never the text."""
    return Markdown(_IMAGE_LINK.sub(lambda link: preview_markdown(base / link["path"], link["title"], width), markdown))


def save_figure(figure: Figure, path: Path) -> Path:
    """Write a matplotlib figure (object API, no global state) as PNG, atomically."""
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    return path


def fit_text(text: str, font: FontChain | ImageFont.FreeTypeFont | ImageFont.ImageFont, width: float) -> str:
    """``text``, or its longest prefix that fits ``width`` pixels followed by an ellipsis."""
    if font.getlength(text) <= width:
        return text
    fits = bisect.bisect_right(range(len(text) + 1), width, key=lambda n: font.getlength(text[:n] + ELLIPSIS))
    return text[: max(fits - 1, 0)].rstrip(" ,") + ELLIPSIS


def _tile_image(rgb: np.ndarray, tile: int) -> Image.Image:
    """A uint8 RGB array as a ``tile``×``tile`` picture; other sizes are resized (collages show square crops)."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"collage images must be uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
    image = Image.fromarray(rgb, mode="RGB")
    if image.size != (tile, tile):
        image = image.resize((tile, tile), Image.Resampling.LANCZOS)
    return image


def render_collage(
    rows: Sequence[CollageRow],
    path: Path,
    tile: int = 224,
    columns: tuple[str, ...] = COLUMNS,
) -> Path:
    """Draw ``rows`` under a header of column titles and write the PNG atomically to ``path``.

    Text goes through the font chain (:mod:`pipeline.core.fonts`), so tags in any script the machine has fonts for
    render as glyphs; one warning names the characters none has (drawn as U+FFFD) and what to install.
    """
    if not rows:
        raise ValueError("a collage needs at least one row")
    if any(len(row.images) != len(columns) for row in rows):
        raise ValueError(f"every row needs one image per column title {columns}")
    layout = CollageLayout(tile=tile, n_rows=len(rows), n_columns=len(columns))
    font = FontChain(layout.font_size)
    canvas = Image.new("RGB", (layout.width, layout.height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    titles = [fit_text(title, font, tile) for title in columns]
    for column, title in enumerate(titles):
        x, _ = layout.tile_origin(0, column)
        font.draw(draw, (x + tile / 2, layout.margin), title, TEXT, anchor="ma")
    caption_width = layout.width - 2 * layout.margin
    captions = [fit_text(row.caption, font, caption_width) for row in rows]
    for r, (row, caption) in enumerate(zip(rows, captions, strict=True)):
        for column, rgb in enumerate(row.images):
            canvas.paste(_tile_image(rgb, tile), layout.tile_origin(r, column))
        font.draw(draw, layout.caption_origin(r), caption, TEXT)
    warn_missing([*titles, *captions])
    with atomic_path(path, suffix=".png") as tmp:
        canvas.save(tmp, format="PNG")
    return path


_QUOTE_TRIGGERS = ('"', "|", "\\", "\n", "\r", "\t", "`")


def format_cell(value: object, column: str = "") -> str:
    """One Markdown cell: integers exact with separators, floats to 4 significant digits, shares in %.

    Strings that a table or a reader would mangle (pipes, quotes, edge whitespace, control characters,
    the empty string) are written as JSON strings, with ``|`` as ``\\u007c`` so no escape is Markdown's.
    """
    if isinstance(value, bool | np.bool_):
        return str(bool(value)).lower()
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            return "n/a"
        if column.startswith("share"):
            return f"{float(value) * 100:,.4g}%"
        return f"{float(value):,.4g}"
    text = str(value)
    if text == "" or text != text.strip() or any(c in text for c in _QUOTE_TRIGGERS):
        return json.dumps(text, ensure_ascii=False).replace("|", "\\u007c")
    return text


def markdown_table(frame: pd.DataFrame, max_rows: int | None = None) -> str:
    """``frame`` (its first ``max_rows`` rows) as a GitHub Markdown table."""
    head = frame if max_rows is None else frame.head(max_rows)
    lines = ["| " + " | ".join(map(str, head.columns)) + " |", "|" + "---|" * len(head.columns)]
    for row in head.itertuples(index=False):
        cells = (format_cell(value, str(column)) for column, value in zip(head.columns, row, strict=True))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
