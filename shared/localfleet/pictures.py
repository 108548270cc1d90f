"""Images in and out, for every image backend.

In: GenerateImage's `src` and `ref_images` (file paths), UpscaleImage's `src`, GenerateVideo's
`start_image` (paths), Detect's `src` (base64). Each is decoded the same way and a bad one refused the
same way, before it reaches an engine: empty, not an image, truncated, or more pixels than `max_pixels`
(a small compressed file can decode to gigapixels): each a BadInput naming the field. The numbers of a
generation (size, steps, frames, seed) are checked here too, so every backend words them alike.

Out: PNGs and MP4s go to `dst` through `files.replacing`, complete or not at all. Pillow (the runtime's
`images` extra) and PyAV (`audio`) are imported on first use, never at start-up.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import Field

from localfleet import files
from localfleet.errors import BadInput
from localfleet.inputs import excerpt
from localfleet.options import BackendOptions
from localfleet.paths import MP4, PATH_CHARS, PNG, PathPolicy

if TYPE_CHECKING:
    from pathlib import Path

    from PIL import Image

    from localfleet.proto import backend_pb2 as pb

#: the most pixels one input image may decode to unless a backend says otherwise (8192 x 8192)
MAX_PIXELS = 8192 * 8192
#: the largest image file read from a path (core's own messages stop at 50 MiB)
MAX_FILE_BYTES = 256 * 1024 * 1024
FORMATS = "PNG, JPEG, WebP, BMP, GIF or TIFF"
#: the longest side an output may have, whatever a backend's max_pixels says
MAX_SIDE = 8192
#: seeds drawn for seed 0 lie in [0, SEED_RANGE): every engine takes them
SEED_RANGE = 2**31


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
        try:
            data = base64.b64decode(body, validate=True)
        except ValueError:  # line breaks (MIME-style base64): read again without the whitespace
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


def write_mp4(frames: list[Image.Image], fps: int, dst: Path, check: Callable[[], None]) -> str:
    """`frames` as H.264 in yuv420p (what browsers and core's clients play) with PyAV's libx264, into
    `dst`, complete or not at all (blocking); `check` runs between frames. Returns what was written."""
    import av

    width, height = frames[0].size
    with files.replacing(dst, MP4) as handle, av.open(handle, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        # yuv420p halves chroma in both directions: an odd side is cropped by one pixel.
        stream.width, stream.height = width - width % 2, height - height % 2
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "medium"}
        for image in frames:
            check()
            frame = av.VideoFrame.from_image(image.convert("RGB"))  # type: ignore[no-untyped-call]  # PyAV leaves it unannotated
            container.mux(stream.encode(frame.reformat(stream.width, stream.height, "yuv420p")))
        container.mux(stream.encode(None))
    return f"{len(frames)} frames at {fps} fps, {width}x{height} MP4"


# -- the numbers of a generation ---------------------------------------------------------------------
class GenerationOptions(BackendOptions):
    """LoadModel options every image and video backend takes: what one request may cost, and the video
    defaults (a backend changes the defaults where its models want others)."""

    max_steps: int = Field(150, ge=1, description="the most denoising steps one request may ask for")
    max_frames: int = Field(256, ge=1, description="the most video frames one request may ask for")
    max_pixels: int = Field(2048 * 2048, ge=64 * 64, description="the largest output, width x height")
    frames: int = Field(16, ge=1, description="video frames when num_frames is 0")
    fps: int = Field(8, ge=1, le=120, description="video frame rate when fps is 0")


def check_size(width: int, height: int, step: int, max_pixels: int, engine: str) -> None:
    """An output size: positive, a multiple of `step` (what `engine` needs), within the caps."""
    for name, value in (("width", width), ("height", height)):
        if value <= 0:
            raise BadInput(f"{name} must be a positive number of pixels, a multiple of {step}; got {value}")
        if value > MAX_SIDE:
            raise BadInput(f"{name} {value} is over {MAX_SIDE} pixels")
        if value % step:
            raise BadInput(f"{name} {value} is not a multiple of {step}, as {engine} needs")
    if width * height > max_pixels:
        raise BadInput(
            f"{width}x{height} is {width * height:,} pixels, over the {max_pixels:,} allowed (the "
            "max_pixels option)"
        )


def check_steps(step: int, options: GenerationOptions) -> int:
    """A request's `step`: 1 to the max_steps option."""
    return check_count(step, options.max_steps, "step", "denoising steps", "max_steps")


@dataclass(frozen=True)
class Clip:
    """What a checked GenerateVideo asks for."""

    steps: int
    frames: int
    fps: int


def check_video(request: pb.GenerateVideoRequest, options: GenerationOptions, step: int, engine: str) -> Clip:
    """A GenerateVideo's numbers: size (a multiple of `step`), steps, frames and fps (0 = the options'
    defaults) within the caps, cfg_scale not negative."""
    check_size(request.width, request.height, step, options.max_pixels, engine)
    steps = check_steps(request.step, options)
    frames = check_count(
        request.num_frames or options.frames, options.max_frames, "num_frames", "frames", "max_frames"
    )
    fps = request.fps or options.fps
    if not 1 <= fps <= 120:
        raise BadInput(f"fps must be 1 to 120 (0 = {options.fps}), got {request.fps}")
    if request.cfg_scale < 0:
        raise BadInput(f"cfg_scale must be >= 0 (0 = the model's default), got {request.cfg_scale:g}")
    return Clip(steps, frames, fps)


def check_count(value: int, most: int, field: str, what: str, option: str) -> int:
    """A count a request asks for (steps, frames): 1 to `most`, which the LoadModel `option` sets."""
    if not 1 <= value <= most:
        raise BadInput(f"{field} must be 1 to {most} {what} (the {option} option), got {value}")
    return value


def seed_or_drawn(seed: int) -> int:
    """`seed`, or a random one for 0, which proto3 cannot tell from unset; callers report which."""
    return seed or secrets.randbelow(SEED_RANGE)
