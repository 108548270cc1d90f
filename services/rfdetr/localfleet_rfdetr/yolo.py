"""YOLOv8-style detectors exported to ONNX, on ONNX Runtime: the only module that imports onnxruntime.

The export Ultralytics makes (`yolo export format=onnx`, no NMS inside): one input [1, 3, H, W] of RGB in
[0, 1], one output [1, 4 + C, N] whose rows are each candidate's centre x, centre y, width and height in the
input's pixels, then its C class scores. Here: letterbox the image to H x W (scaled to fit, centred,
grey 114 around, as Ultralytics does), run, keep candidates whose best class score reaches the threshold,
per-class non-maximum suppression, then map the boxes back to the original image's pixels with their
top-left corner.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnxruntime
from PIL import Image

from localfleet.errors import EngineFailure, Refused
from localfleet.inputs import excerpt
from localfleet_rfdetr.models import Found, names_from_metadata

#: Ultralytics' defaults: confidence 0.25, the most candidates NMS sees, the most detections returned
DEFAULT_THRESHOLD = 0.25
MAX_NMS = 30_000
MAX_DETECTIONS = 300
PAD = 114
STRIDE = 32


@dataclass(frozen=True)
class Settings:
    path: str
    labels: list[str] | None  # the labels option's names, which win over the model's own
    iou: float
    input_size: int | None  # for a model whose input size is dynamic and unrecorded
    threads: int
    device: str | None


@dataclass(frozen=True)
class Placement:
    """Where the letterbox put the image: its scale, the padding left and above, its own size."""

    scale: float
    left: float
    top: float
    width: int
    height: int


class YoloOnnx:
    default_threshold = DEFAULT_THRESHOLD

    def __init__(self, settings: Settings) -> None:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = settings.threads
        options.log_severity_level = 3
        # No busy-waiting between runs: the cores go back to the event loop and to other processes.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = _providers(settings.device)
        try:
            self.session = onnxruntime.InferenceSession(
                settings.path, sess_options=options, providers=providers
            )
        except Exception as exc:
            what = excerpt(settings.path, 120)
            raise Refused(f"{what} is not an ONNX model ONNX Runtime can load: {excerpt(str(exc))}") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or len(outputs) < 1 or len(outputs[0].shape) != 3:
            raise Refused(
                f"{excerpt(settings.path, 120)} has inputs {[i.shape for i in inputs]} and outputs "
                f"{[o.shape for o in outputs]}: not a YOLOv8-style detector (input [1, 3, H, W], output "
                "[1, 4 + classes, candidates])"
            )
        self._input = inputs[0].name
        self._dtype = np.float16 if inputs[0].type == "tensor(float16)" else np.float32
        meta = self.session.get_modelmeta().custom_metadata_map
        self.height, self.width = _input_size(inputs[0].shape, meta.get("imgsz", ""), settings.input_size)
        own = names_from_metadata(meta["names"]) if "names" in meta else None
        classes = outputs[0].shape[1]
        count = classes - 4 if isinstance(classes, int) else None
        if count is not None and count < 1:
            raise Refused(
                f"{excerpt(settings.path, 120)}'s output has {classes} rows: 4 box rows + classes needed"
            )
        names = settings.labels or own
        if names is not None and count is not None and len(names) != count:
            source = "the labels file" if settings.labels else "the model's metadata"
            raise Refused(f"{source} names {len(names)} classes but the model scores {count}")
        self.names = names or []
        self.iou = settings.iou
        self.name = f"ONNX detector {os.path.basename(settings.path)}"
        self._bytes = os.path.getsize(settings.path)

    def nbytes(self) -> int:
        return self._bytes

    def detect(self, image: object, threshold: float) -> list[Found]:
        assert isinstance(image, Image.Image)
        blob, scale, left, top = letterbox(image, self.width, self.height)
        try:
            output = self.session.run(None, {self._input: blob.astype(self._dtype)})[0]
        except Exception as exc:
            raise EngineFailure(f"ONNX Runtime failed on this image: {excerpt(str(exc))}") from None
        rows = np.asarray(output, dtype=np.float32)
        if rows.ndim != 3 or rows.shape[0] != 1 or rows.shape[1] < 5:
            raise EngineFailure(f"the model's output has shape {list(rows.shape)}, not [1, 4 + classes, N]")
        if self.names and rows.shape[1] - 4 != len(self.names):
            raise EngineFailure(f"the model scored {rows.shape[1] - 4} classes, not {len(self.names)}")
        return self._decode(rows[0].T, threshold, Placement(scale, left, top, image.width, image.height))

    def _decode(self, rows: np.ndarray, threshold: float, at: Placement) -> list[Found]:
        scores = rows[:, 4:]
        classes = scores.argmax(axis=1)
        confidence = scores[np.arange(len(rows)), classes]
        keep = np.flatnonzero(np.isfinite(confidence) & (confidence >= threshold))
        if len(keep) > MAX_NMS:
            keep = keep[np.argsort(-confidence[keep], kind="stable")[:MAX_NMS]]
        boxes = _corners(rows[keep, :4])
        chosen = keep[nms(boxes, confidence[keep], classes[keep], self.iou)][:MAX_DETECTIONS]
        # Back to the original image: undo the padding, then the scale; clip to the image.
        corners = _corners(rows[chosen, :4])
        corners[:, [0, 2]] = np.clip((corners[:, [0, 2]] - at.left) / at.scale, 0, at.width)
        corners[:, [1, 3]] = np.clip((corners[:, [1, 3]] - at.top) / at.scale, 0, at.height)
        found = []
        for (x1, y1, x2, y2), score, cls in zip(
            corners.tolist(), confidence[chosen].tolist(), classes[chosen].tolist(), strict=True
        ):
            name = self.names[cls] if cls < len(self.names) else str(cls)
            found.append(Found(x1, y1, x2 - x1, y2 - y1, score, name))
        return found


def letterbox(image: Image.Image, width: int, height: int) -> tuple[np.ndarray, float, float, float]:
    """[1, 3, height, width] float32 in [0, 1]: `image` scaled to fit, centred on grey; with the scale
    and the left and top padding, to map boxes back."""
    scale = min(width / image.width, height / image.height)
    new_w = max(1, round(image.width * scale))
    new_h = max(1, round(image.height * scale))
    left, top = round((width - new_w) / 2 - 0.1), round((height - new_h) / 2 - 0.1)
    canvas = Image.new("RGB", (width, height), (PAD, PAD, PAD))
    canvas.paste(image.resize((new_w, new_h), Image.Resampling.BILINEAR), (left, top))
    blob = np.asarray(canvas, dtype=np.float32).transpose(2, 0, 1)[None] / 255.0
    return np.ascontiguousarray(blob), scale, float(left), float(top)


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float) -> np.ndarray:
    """Indices of the boxes (x1, y1, x2, y2) greedy per-class non-maximum suppression keeps, best first:
    a box is dropped when it overlaps a better box of its class by more than `iou`."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    # Boxes of different classes never overlap once each class is moved apart from the others.
    shifted = boxes + (classes.astype(np.float32) * (float(boxes.max()) + 1.0))[:, None]
    x1, y1, x2, y2 = shifted.T
    areas = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    order = np.argsort(-scores, kind="stable")
    kept = []
    while len(order):
        best, rest = order[0], order[1:]
        kept.append(best)
        inter_w = np.clip(np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]), 0, None)
        inter_h = np.clip(np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]), 0, None)
        inter = inter_w * inter_h
        union = areas[best] + areas[rest] - inter
        overlap = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[overlap <= iou]
    return np.asarray(kept, dtype=np.int64)


def _corners(centred: np.ndarray) -> np.ndarray:
    cx, cy, w, h = centred.T
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).astype(np.float32)


def _input_size(shape: list[object], imgsz: str, option: int | None) -> tuple[int, int]:
    """(height, width): the input's own when fixed, else the input_size option, else the export's
    recorded imgsz, else 640 (Ultralytics' default)."""
    height, width = shape[2], shape[3]
    if isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0:
        return height, width
    if option is not None:
        return option, option
    recorded = _ints(imgsz)
    if recorded is not None:
        return recorded
    return 640, 640


def _ints(text: str) -> tuple[int, int] | None:
    """Ultralytics' imgsz metadata, "[320, 320]" (height, width), when sane."""
    parts = text.strip().strip("[]()").split(",")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        return None
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or not all(STRIDE <= v <= 8192 and v % STRIDE == 0 for v in values):
        return None
    return values[0], values[1]


def _providers(device: str | None) -> list[str | tuple[str, dict[str, str]]]:
    """CUDA where onnxruntime-gpu has it (unless device is cpu; cuda:N picks a GPU); any other device, or
    cuda without it, is refused."""
    cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    if not device:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
    if device == "cpu":
        return ["CPUExecutionProvider"]
    kind, _, index = device.partition(":")
    if kind != "cuda" or not cuda or not (index.isdigit() or not index):
        raise Refused(
            f"device {excerpt(device)}: this ONNX Runtime runs on cpu{' and cuda[:N]' if cuda else ''}"
        )
    return [("CUDAExecutionProvider", {"device_id": index or "0"}), "CPUExecutionProvider"]
