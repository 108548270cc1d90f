"""What a LoadModel names, decided without loading anything, and what an engine hands back (plain Python:
no torch, no numpy, no onnxruntime here; the servicer and both engines share it)."""

from __future__ import annotations

import ast
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from localfleet.errors import Refused
from localfleet.inputs import excerpt

#: RF-DETR's model classes in rfdetr 1.11.2 (keypoint models are left out: Detect has no keypoints)
DETECTORS = ("RFDETRNano", "RFDETRSmall", "RFDETRMedium", "RFDETRBase", "RFDETRLarge")
SEGMENTERS = (
    "RFDETRSegPreview",
    "RFDETRSegNano",
    "RFDETRSegSmall",
    "RFDETRSegMedium",
    "RFDETRSegLarge",
    "RFDETRSegXLarge",
    "RFDETRSeg2XLarge",
)
#: Types that mean "a YOLOv8-style detector exported to ONNX"
ONNX_TYPES = ("onnx", "yolo", "yolov8")
#: RF-DETR checkpoints (what rfdetr's training writes)
CHECKPOINTS = (".pth", ".pt")
#: the most class names a labels file may hold
MAX_LABELS = 100_000


def _key(name: str) -> str:
    """`RFDETRSegNano`, `rfdetr-seg-nano`, `rf-detr-seg-nano.pth` and `rfdetr_seg_nano` all alike."""
    stem = Path(name).name.lower()
    for suffix in CHECKPOINTS:
        stem = stem.removesuffix(suffix)
    return "".join(ch for ch in stem if ch.isalnum())


_VARIANTS = {_key(v): v for v in (*DETECTORS, *SEGMENTERS)}


@dataclass(frozen=True)
class Choice:
    """Which engine serves a model, and from what."""

    engine: str  # "rfdetr" or "onnx"
    variant: str = ""  # rfdetr's class name; "" with a checkpoint whose variant rfdetr reads from the file
    checkpoint: str = ""  # an RF-DETR .pth, or the .onnx file


def choose(name: str, path: str, type_: str) -> Choice | str:  # noqa: PLR0911 (one answer a case)
    """The engine for a LoadModel (Model `name`, its resolved `path`, `Type`), or why none fits; fast
    checks only."""
    kind = type_.strip()
    is_file = os.path.isfile(path)
    suffix = Path(path).suffix.lower()
    if kind.lower() in ONNX_TYPES or (not kind and suffix == ".onnx"):
        if not is_file:
            return f"ONNX model file {excerpt(path, 120)} does not exist on this machine"
        return Choice("onnx", checkpoint=path)
    if kind:
        variant = _VARIANTS.get(_key(kind))
        if variant is None:
            return (
                f"Type {excerpt(kind)} is neither an RF-DETR model ({', '.join(DETECTORS + SEGMENTERS)}) nor "
                f"{' / '.join(ONNX_TYPES)}"
            )
        return Choice("rfdetr", variant, path if is_file else "")
    if is_file and suffix in CHECKPOINTS:
        return Choice("rfdetr", _VARIANTS.get(_key(path), ""), path)
    variant = _VARIANTS.get(_key(name))
    if variant is not None and not (is_file or os.path.isabs(path)):
        return Choice("rfdetr", variant)
    return (
        "it serves RF-DETR (an RF-DETR model name such as rfdetr-nano, or a .pth checkpoint, with Type "
        "RFDETRNano...) and YOLOv8-style .onnx detectors"
    )


@dataclass(frozen=True)
class Found:
    """One detection in the input image's pixels: (x, y) its top-left corner."""

    x: float
    y: float
    width: float
    height: float
    confidence: float
    class_name: str
    mask: bytes = b""  # a PNG of the image's size, 255 inside the object, for segmentation models


class Engine(Protocol):
    name: str
    default_threshold: float

    def detect(self, image: object, threshold: float) -> list[Found]: ...

    def nbytes(self) -> int: ...


def read_labels(path: str) -> list[str]:
    """Class names from a file: a JSON list, a JSON object {"0": "person", ...}, or one name a line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise Refused(f"labels file {excerpt(path, 120)} cannot be read: {exc}") from None
    stripped = text.lstrip()
    if stripped.startswith(("[", "{")):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise Refused(f"labels file {excerpt(path, 120)} is not valid JSON: {exc}") from None
        names = _names(data)
        if names is None:
            raise Refused(
                f"labels file {excerpt(path, 120)}: expected a list of names or an object of index -> name"
            )
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names or len(names) > MAX_LABELS:
        raise Refused(
            f"labels file {excerpt(path, 120)} names {len(names)} classes; 1 to {MAX_LABELS:,} needed"
        )
    return names


def names_from_metadata(text: str) -> list[str] | None:
    """Ultralytics' `names` metadata ("{0: 'person', 1: 'bicycle'}"), or a JSON list; None if neither."""
    if len(text) > 10_000_000:
        return None
    try:
        data = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        try:
            data = json.loads(text)
        except ValueError:
            return None
    return _names(data)


def _names(data: object) -> list[str] | None:
    if isinstance(data, list) and all(isinstance(n, str) for n in data):
        return list(data)
    if isinstance(data, dict):
        try:
            indexed = {int(k): v for k, v in data.items()}
        except (TypeError, ValueError):
            return None
        if sorted(indexed) != list(range(len(indexed))) or not all(
            isinstance(v, str) for v in indexed.values()
        ):
            return None
        return [indexed[i] for i in range(len(indexed))]
    return None
