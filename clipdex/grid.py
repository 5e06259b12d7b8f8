"""Contact sheets: photos in a grid with a caption under each, saved as one image.

Used for search results (``--grid``) and classification review grids. A sheet
is sized by the photos it draws (never by how many were asked for) and is
refused, before any pixel is allocated, when it would exceed
:data:`MAX_GRID_PIXELS` or :data:`MAX_SIDE_PX`.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from clipdex.decode import open_image_file
from clipdex.errors import GridError, ImageDecodeError, ImageTypeError, OutputError
from clipdex.fileio import write_atomically
from clipdex.video import moment_name, split_frame_path

# Pillow's own decompression-bomb limit: a larger sheet would warn or fail when opened
# again with Pillow, and takes 3 bytes a pixel (here ~270 MB) to draw.
MAX_GRID_PIXELS = 89_478_485
MAX_SIDE_PX = 65_500  # JPEG cannot store a side above 65,535 pixels
MIN_THUMB_PX, MAX_THUMB_PX = 16, 1024
THUMB_PX = 224
CAPTION_PX = 40
PAD_PX = 8
TITLE_PX = 34
BACKGROUND = (250, 250, 250)
MISSING = (210, 210, 210)
TEXT = (20, 20, 20)


@dataclass(frozen=True)
class Tile:
    """One photo of a sheet and the text under it.

    ``path`` is the photo's display path; ``fs_path`` the path to open when it
    differs (a file name that is not valid UTF-8). A moment of a video is drawn
    from its frame path (``party.mp4#t=83.500``: :mod:`clipdex.video`), which
    :func:`~clipdex.decode.open_image_file` decodes from the video.
    """

    path: str
    caption: str
    fs_path: str | None = None


@dataclass(frozen=True)
class Row:
    """A titled row of tiles (a label's examples, say)."""

    title: str
    tiles: Sequence[Tile]


def tile_name(path: str) -> str:
    """The name under a tile: the file's name, or for a moment of a video its video's name and
    time as people write a moment (``party.mp4 @ 0:01:23``), not the frame path's suffix."""
    frame = split_frame_path(path)
    if frame is None:
        return os.path.basename(path)
    return moment_name(*frame)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _thumbnail(path: str, size: int) -> Image.Image:
    try:
        image = open_image_file(path, draft_size=size)
        return ImageOps.fit(image, (size, size), Image.Resampling.BICUBIC)
    except ImageDecodeError:
        return Image.new("RGB", (size, size), MISSING)


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
              width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def sheet_size(rows: Sequence[Row], *, thumb: int = THUMB_PX, columns: int | None = None) -> tuple[int, int]:
    """(width, height) in pixels of the sheet :func:`draw_rows` would draw."""
    columns = _columns(rows, columns)
    titled = any(r.title for r in rows)
    cell_w, cell_h = thumb + PAD_PX, thumb + CAPTION_PX + PAD_PX
    row_h = cell_h + (TITLE_PX if titled else 0)
    return columns * cell_w + PAD_PX, max(1, len(rows)) * row_h + PAD_PX


def _columns(rows: Sequence[Row], columns: int | None) -> int:
    """As many columns as the fullest row draws (at most ``columns``), at least one."""
    drawn = max((len(r.tiles) for r in rows), default=0)
    if columns is not None:
        drawn = min(drawn, columns)
    return max(1, drawn)


def check_sheet(rows: Sequence[Row], out: str | os.PathLike[str], *, thumb: int = THUMB_PX,
                columns: int | None = None) -> tuple[int, int]:
    """Raise :class:`GridError` unless the sheet can be drawn and saved; return its size.

    Checked before anything is allocated: the thumbnail size, the image type of
    ``out`` (by extension) and the sheet's size in pixels.
    """
    shown = os.fspath(out)
    if isinstance(thumb, bool) or not isinstance(thumb, int) or not MIN_THUMB_PX <= thumb <= MAX_THUMB_PX:
        raise GridError(shown, f"thumbnail size {thumb!r} is not between {MIN_THUMB_PX} and {MAX_THUMB_PX} "
                        "pixels", "Use e.g. 160.")
    if columns is not None and (isinstance(columns, bool) or not isinstance(columns, int) or columns < 1):
        raise GridError(shown, f"columns {columns!r} is not a positive whole number", "Use e.g. 8.")
    check_grid_path(shown)
    width, height = sheet_size(rows, thumb=thumb, columns=columns)
    if width * height > MAX_GRID_PIXELS or max(width, height) > MAX_SIDE_PX:
        raise GridError(shown, f"the sheet would be {width:,} x {height:,} pixels, more than clipdex draws "
                        f"({MAX_GRID_PIXELS / 1e6:.0f} megapixels, {MAX_SIDE_PX:,} pixels a side)",
                        "Draw fewer photos (fewer results, or fewer per label) or smaller thumbnails.")
    return width, height


def check_grid_path(out: str | os.PathLike[str], option: str = "--grid") -> str:
    """The Pillow format an image file named ``out`` is written in (by its extension).

    Raises :class:`ImageTypeError` (a :class:`GridError`) for an extension that is
    not an image type Pillow can write. The one check of image outputs: the CLI
    runs it before any work, :func:`draw_rows` again before it saves.
    """
    shown = os.fspath(out)
    extension = os.path.splitext(shown)[1].lower()
    Image.init()  # registers every plugin, so .webp and friends are known before the first save
    image_format = Image.registered_extensions().get(extension)
    if image_format is None or image_format not in Image.SAVE:
        raise ImageTypeError(shown, option, f"{extension or 'a name without an extension'} is not an image "
                             "type clipdex can write", "End the name in .jpg, .png or .webp.")
    return image_format


def draw_rows(rows: Sequence[Row], out: str | os.PathLike[str], *, thumb: int = THUMB_PX,
              columns: int | None = None) -> str:
    """Draw titled rows of captioned thumbnails into ``out`` (JPEG or PNG by extension).

    The sheet has as many columns as the fullest row draws (at most
    ``columns``). It is written through a temporary file, so ``out`` never
    holds half an image. Raises :class:`GridError` for a sheet that is too
    large or an unknown image type, :class:`~clipdex.errors.OutputError` when
    ``out`` cannot be written.
    """
    width, height = check_sheet(rows, out, thumb=thumb, columns=columns)
    columns = _columns(rows, columns)
    titled = any(r.title for r in rows)
    cell_h = thumb + CAPTION_PX + PAD_PX
    cell_w = thumb + PAD_PX
    sheet = Image.new("RGB", (width, height), BACKGROUND)
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
            sheet.paste(_thumbnail(tile.fs_path or tile.path, thumb), (x, y))
            for line_no, line in enumerate(tile.caption.split("\n")[:2]):
                draw.text((x, y + thumb + 3 + line_no * 18), _fit_text(draw, line, small, thumb),
                          fill=TEXT, font=small)
        y += cell_h
    out = os.fspath(out)
    image_format = check_grid_path(out)
    buffer = io.BytesIO()
    sheet.save(buffer, format=image_format, **({"quality": 90} if image_format == "JPEG" else {}))
    try:
        write_atomically(Path(out), buffer.getvalue())
    except OSError as e:
        raise OutputError(out, "--grid", f"cannot be written ({e.strerror or e})") from None
    return out


def draw_grid(tiles: Sequence[Tile], out: str | os.PathLike[str], *, thumb: int = THUMB_PX,
              columns: int | None = None) -> str:
    """Draw tiles in a square-ish grid without titles (search results)."""
    if columns is not None and (isinstance(columns, bool) or not isinstance(columns, int) or columns < 1):
        raise GridError(os.fspath(out), f"columns {columns!r} is not a positive whole number", "Use e.g. 8.")
    columns = columns or max(1, math.ceil(math.sqrt(len(tiles))))
    rows = [Row("", tiles[i:i + columns]) for i in range(0, len(tiles), columns)]
    return draw_rows(rows, out, thumb=thumb, columns=columns)
