"""A request's Images, as every multimodal backend reads them: base64, a data URI, or the path of a
readable file (checked against LOCALFLEET_PATH_ROOTS)."""

from __future__ import annotations

import base64
import binascii
import os
import re

from localfleet.errors import BadInput
from localfleet.paths import PathPolicy

#: images one request may carry
MAX_IMAGES = 16
_BASE64 = re.compile(r"[A-Za-z0-9+/=\s_-]*")


def read_images(entries: list[str], paths: PathPolicy) -> list[bytes]:
    """Each Images entry's bytes: base64 (or a data URI), or the file a path names."""
    if len(entries) > MAX_IMAGES:
        raise BadInput(f"{len(entries)} images in Images; send at most {MAX_IMAGES}")
    return [_image_bytes(index, entry, paths) for index, entry in enumerate(entries)]


def _image_bytes(index: int, entry: str, paths: PathPolicy) -> bytes:
    field = f"Images[{index}]"
    if not entry.strip():
        raise BadInput(f"{field} is empty; send an image as base64")
    if entry.startswith("data:"):
        entry = entry.partition(",")[2]
    elif _names_a_file(entry):
        with open(paths.readable(entry, field), "rb") as file:
            return file.read()
    if not _BASE64.fullmatch(entry):
        raise BadInput(f"{field} is neither base64 nor the path of a readable file")
    try:
        data = base64.b64decode(entry.replace("-", "+").replace("_", "/") + "==", validate=False)
    except (binascii.Error, ValueError):
        raise BadInput(f"{field} is not valid base64") from None
    if not data:
        raise BadInput(f"{field} decodes to no bytes; send an image as base64")
    return data


def _names_a_file(entry: str) -> bool:
    """Whether `entry` is a path to an existing file (base64 can look like a path: JPEG's starts '/9j/')."""
    if len(entry) > 4096 or "\0" in entry or not (entry.startswith(("/", "./")) or "." in entry[-6:]):
        return False
    try:
        return os.path.isfile(entry)
    except (OSError, ValueError):
        return False
