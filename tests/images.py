"""Edge-case image files, generated with Pillow (nothing binary is committed)."""

from __future__ import annotations

import io
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def gradient(width: int = 96, height: int = 64) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float32)
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    rgb = np.stack([np.broadcast_to(x, (height, width)), np.broadcast_to(y, (height, width)),
                    np.full((height, width), 128.0)], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def photo(seed: int, width: int = 640, height: int = 480) -> Image.Image:
    """A photo-like image, different for every ``seed``: a sky-to-ground scene with
    shapes, texture and sensor noise (so JPEG, resizing and the model see real structure)."""
    rng = np.random.default_rng(seed)
    top, bottom = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    pixels = np.broadcast_to(top * (1 - t) + bottom * t, (height, width, 3)).copy()
    yy, xx = np.mgrid[0:height, 0:width]
    for _ in range(int(rng.integers(3, 8))):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        rx, ry = rng.uniform(20, width / 3), rng.uniform(20, height / 3)
        inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
        pixels[inside] = pixels[inside] * 0.3 + rng.uniform(0, 255, 3) * 0.7
    stripes = np.sin(xx / rng.uniform(3, 30) + yy / rng.uniform(3, 30))[..., None]
    pixels += 12.0 * stripes + rng.normal(0.0, 6.0, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def write_photos(folder: Path, count: int, start: int = 0) -> list[Path]:
    """``count`` photo-like JPEGs named ``photo-<seed>.jpg`` (seeds from ``start``)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(start, start + count):
        path = folder / f"photo-{seed:03d}.jpg"
        photo(seed).save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def write_photos_with_copies(folder: Path, count: int) -> Path:
    """``count`` photos (:func:`write_photos`) and, in ``copies/``, three copies: the same bytes as
    photo 0, a half-size PNG of photo 1 and a JPEG of photo 2 recompressed at quality 40."""
    write_photos(folder, count)
    (folder / "copies").mkdir()
    shutil.copy(folder / "photo-000.jpg", folder / "copies" / "same-0.jpg")
    photo(1).resize((320, 240)).save(folder / "copies" / "small-1.png")
    photo(2).save(folder / "copies" / "recompressed-2.jpg", quality=40)
    return folder


def write_edge_cases(folder: Path) -> dict[str, Path]:
    """Every troublesome kind of file, by name."""
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}

    def save(name: str, image: Image.Image, **kw: object) -> None:
        paths[name] = folder / name
        image.save(paths[name], **kw)

    save("ok.jpg", gradient())
    save("cmyk.jpg", gradient().convert("CMYK"))
    sixteen = (np.linspace(0, 65535, 96 * 64).reshape(64, 96)).astype(np.uint16)
    save("sixteen.png", Image.fromarray(sixteen))
    palette = gradient().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    save("palette.png", palette, transparency=0)
    rgba = gradient().convert("RGBA")
    rgba.putalpha(0)
    save("transparent.png", rgba)
    save("gray.png", gradient().convert("L"))
    frames = [gradient(), gradient().rotate(90)]
    save("animated.gif", frames[0], save_all=True, append_images=frames[1:], duration=100)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    save("rotated.jpg", gradient(96, 64), exif=exif.tobytes())
    save("mislabelled.jpg", gradient(), format="PNG")
    save("pic.webp", gradient())

    data = io.BytesIO()
    gradient(400, 300).save(data, "JPEG")
    paths["truncated.jpg"] = folder / "truncated.jpg"
    paths["truncated.jpg"].write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
    paths["empty.jpg"] = folder / "empty.jpg"
    paths["empty.jpg"].write_bytes(b"")
    paths["text.jpg"] = folder / "text.jpg"
    paths["text.jpg"].write_text("this is not a photo\n")
    paths["bomb.png"] = folder / "bomb.png"
    paths["bomb.png"].write_bytes(png_claiming(50_000, 50_000))
    return paths


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))
