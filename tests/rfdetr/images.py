"""Images and ONNX files the rfdetr tests make from their real inputs."""

from __future__ import annotations

import base64
import importlib
import importlib.util
import io
from pathlib import Path
from typing import Any

from PIL import Image

Box = tuple[float, float, float, float]  # x, y (top-left), width, height


def face_region() -> Box:
    """Where the astronaut's face is, by scikit-image's own LBP frontal-face cascade (the example of its
    gallery, "Face detection using a cascade classifier", with its settings): a detector independent of
    the model under test. It finds one face, about (178, 74) 87x87 in the 512x512 photograph, which is
    where a person looking at the picture puts Eileen Collins' face (forehead to chin, ear to ear)."""
    data: Any = importlib.import_module("skimage.data")
    cascade: Any = importlib.import_module("skimage.feature").Cascade(
        data.lbp_frontal_face_cascade_filename()
    )
    found = cascade.detect_multi_scale(
        img=data.astronaut(), scale_factor=1.2, step_ratio=1, min_size=(60, 60), max_size=(123, 123)
    )
    assert len(found) == 1, found
    face = found[0]
    box = (float(face["c"]), float(face["r"]), float(face["width"]), float(face["height"]))
    # The sanity check by eye, loose: the face is in the upper middle of the picture.
    assert 120 < box[0] < 240, box
    assert 20 < box[1] < 140, box
    assert 50 < box[2] < 150, box
    return box


def nudenet_onnx() -> Path:
    """nudenet's YOLOv8n file, found without importing nudenet (which imports OpenCV)."""
    spec = importlib.util.find_spec("nudenet")
    assert spec is not None, "pip install nudenet (the test extra)"
    assert spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "320n.onnx"


def iou(a: Box, b: Box) -> float:
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    w = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    h = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = w * h
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def b64(path_or_image: Path | Image.Image, fmt: str = "PNG") -> str:
    if isinstance(path_or_image, Path):
        return base64.b64encode(path_or_image.read_bytes()).decode()
    out = io.BytesIO()
    path_or_image.save(out, format=fmt)
    return base64.b64encode(out.getvalue()).decode()


def placed(astronaut: Path, left: int, top: int, size: tuple[int, int]) -> Image.Image:
    """The photograph pasted at (left, top) on a grey canvas of `size`: a picture of another shape."""
    canvas = Image.new("RGB", size, (90, 90, 90))
    with Image.open(astronaut) as photo:
        canvas.paste(photo.convert("RGB"), (left, top))
    return canvas


def without_metadata(onnx: Path, dst: Path) -> Path:
    """The ONNX model with its metadata (class names, input size) removed: ModelProto's field 14,
    metadata_props, dropped from the top level of the protobuf (no onnx package needed)."""
    data = onnx.read_bytes()
    out = bytearray()
    at = 0
    while at < len(data):
        start = at
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, at = _varint(data, at)
        elif wire == 2:
            length, at = _varint(data, at)
            at += length
        elif wire == 1:
            at += 8
        elif wire == 5:
            at += 4
        else:
            raise ValueError(f"wire type {wire} at {start}")
        if number != 14:
            out += data[start:at]
    dst.write_bytes(bytes(out))
    return dst


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at
