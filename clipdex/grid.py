"""Contact sheets: photos in a grid with a caption under each, saved as one image.

Used for search results (``--grid``) and classification review grids.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont, ImageOps

from clipdex.decode import load_image
from clipdex.errors import ImageDecodeError

THUMB_PX = 224
CAPTION_PX = 40
PAD_PX = 8
TITLE_PX = 34
BACKGROUND = (250, 250, 250)
MISSING = (210, 210, 210)
TEXT = (20, 20, 20)


@dataclass(frozen=True)
class Tile:
    """One photo of a sheet and the text under it."""

    path: str
    caption: str


@dataclass(frozen=True)
class Row:
    """A titled row of tiles (a label's examples, say)."""

    title: str
    tiles: Sequence[Tile]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _thumbnail(path: str, size: int) -> Image.Image:
    try:
        with open(path, "rb") as f:
            image = load_image(f.read(), path, draft_size=size)
        return ImageOps.fit(image, (size, size), Image.Resampling.BICUBIC)
    except (OSError, ImageDecodeError):
        return Image.new("RGB", (size, size), MISSING)


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
              width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def draw_rows(rows: Sequence[Row], out: str | os.PathLike[str], *, thumb: int = THUMB_PX,
              columns: int | None = None) -> str:
    """Draw titled rows of captioned thumbnails into ``out`` (JPEG or PNG by extension)."""
    columns = columns or max((len(r.tiles) for r in rows), default=1) or 1
    titled = any(r.title for r in rows)
    cell_w, cell_h = thumb + PAD_PX, thumb + CAPTION_PX + PAD_PX
    row_h = cell_h + (TITLE_PX if titled else 0)
    sheet = Image.new("RGB", (columns * cell_w + PAD_PX, max(1, len(rows)) * row_h + PAD_PX), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    small, big = _font(15), _font(22)
    y = PAD_PX
    for row in rows:
        if titled:
            draw.text((PAD_PX, y + 4), _fit_text(draw, row.title, big, sheet.width - 2 * PAD_PX),
                      fill=TEXT, font=big)
            y += TITLE_PX
        for col, tile in enumerate(row.tiles[:columns]):
            x = PAD_PX + col * cell_w
            sheet.paste(_thumbnail(tile.path, thumb), (x, y))
            for line_no, line in enumerate(tile.caption.split("\n")[:2]):
                draw.text((x, y + thumb + 3 + line_no * 18), _fit_text(draw, line, small, thumb),
                          fill=TEXT, font=small)
        y += cell_h
    out = os.fspath(out)
    sheet.save(out, quality=90) if out.lower().endswith((".jpg", ".jpeg")) else sheet.save(out)
    return out


def draw_grid(tiles: Sequence[Tile], out: str | os.PathLike[str], *, thumb: int = THUMB_PX,
              columns: int | None = None) -> str:
    """Draw tiles in a square-ish grid without titles (search results)."""
    columns = columns or max(1, math.ceil(math.sqrt(len(tiles))))
    rows = [Row("", tiles[i:i + columns]) for i in range(0, len(tiles), columns)]
    return draw_rows(rows, out, thumb=thumb, columns=columns)
