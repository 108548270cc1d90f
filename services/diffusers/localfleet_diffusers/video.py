"""Frames to an MP4 (H.264 in yuv420p, what browsers and core's clients play) with PyAV's libx264."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from localfleet import files
from localfleet.paths import MP4

if TYPE_CHECKING:
    from PIL import Image


def write_mp4(frames: list[Image.Image], fps: int, dst: Path, check: Callable[[], None]) -> None:
    """Encode `frames` into `dst`, complete or not at all (blocking); `check` runs between frames."""
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
