"""Images in requests, for every image backend: GenerateImage's `src` and `ref_images` (file paths),
UpscaleImage's `src`, GenerateVideo's `start_image` (paths), Detect's `src` (base64).

Each is decoded the same way and a bad one refused the same way, before it reaches an engine: empty,
not an image, truncated, or more pixels than `max_pixels` (a small compressed file can decode to
gigapixels): each a BadInput naming the field. PNGs go to `dst` through `files.replacing`. Pillow is
imported on first use (the runtime's `images` extra), never at start-up.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
from typing import TYPE_CHECKING

from localfleet import files
from localfleet.errors import BadInput
from localfleet.inputs import excerpt
from localfleet.paths import PATH_CHARS, PNG, PathPolicy

if TYPE_CHECKING:
    from pathlib import Path

    from PIL import Image

#: the most pixels one input image may decode to unless a backend says otherwise (8192 x 8192)
MAX_PIXELS = 8192 * 8192
#: the largest image file read from a path (core's own messages stop at 50 MiB)
MAX_FILE_BYTES = 256 * 1024 * 1024
FORMATS = "PNG, JPEG, WebP, BMP, GIF or TIFF"


def decode(data: bytes, field: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """`data` as an RGB image, fully decoded; BadInput naming `field` when it is not one."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise BadInput(f"{field} is empty; send an image ({FORMATS})")
    try:
        image = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError):
        raise BadInput(f"{field} is not an image Pillow can read; send {FORMATS}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise BadInput(
            f"{field} is {width}x{height} pixels, over the {max_pixels:,} this backend accepts; send a "
            "smaller image"
        )
    try:
        image.load()
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow's "image file is truncated" is an OSError
        raise BadInput(f"{field} could not be decoded ({excerpt(str(exc), 80)}): is it truncated?") from None
    return image if image.mode == "RGB" else image.convert("RGB")


def read(path: str, field: str, paths: PathPolicy, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """The image file at `path` (a request path, checked against the path roots), decoded (blocking)."""
    resolved = paths.readable(path, field)
    size = os.stat(resolved).st_size
    if size > MAX_FILE_BYTES:
        raise BadInput(
            f"{field} {excerpt(path, PATH_CHARS)} is {size:,} bytes; image files up to "
            f"{MAX_FILE_BYTES:,} are read"
        )
    return decode(resolved.read_bytes(), f"{field} {excerpt(path, PATH_CHARS)}", max_pixels)


def from_base64(text: str, field: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """An image sent inline: raw base64, as core sends Detect's `src`, or a data URI."""
    body = text.partition(",")[2] if text.startswith("data:") else text
    try:
        data = base64.b64decode("".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        raise BadInput(
            f"{field} is not base64 ({excerpt(text, 40)}...); send the image's bytes in base64 or a data URI"
        ) from None
    return decode(data, field, max_pixels)


def write_png(image: Image.Image, dst: Path) -> None:
    """`image` to `dst` as a PNG, complete or not at all (blocking)."""
    with files.replacing(dst, PNG) as handle:
        image.save(handle, format="PNG")
