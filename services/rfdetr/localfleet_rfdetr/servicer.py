"""rfdetr: object detection (the Detect RPC) with RF-DETR on torch, or a YOLOv8-style ONNX detector.

`src` is the image itself, base64 (core turns a URL or a data URI into base64 before it calls) or a data
URI. Each Detection is a box in the input image's pixels, `x`, `y` its TOP-LEFT corner (not the centre),
with the class name, the confidence, and for RF-DETR segmentation models a PNG mask of the image's size;
detections come sorted by confidence, best first. `threshold` 0 means the model's default: 0.5 for
RF-DETR (rfdetr's own), 0.25 for ONNX detectors (Ultralytics'). Neither engine takes a text prompt, points
or boxes: a request with any is refused, naming the field, rather than answered as if they were read.

Which engine serves a model is decided by `Type` or the file (localfleet_rfdetr.models.choose): an RF-DETR
class name (RFDETRNano ... RFDETRLarge, RFDETRSeg*) or model name (rfdetr-nano), a .pth checkpoint, or an
.onnx file (Type onnx).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from localfleet import pictures
from localfleet.backend import Backend, ModelRef, beside_model
from localfleet.call import Call
from localfleet.cpus import cap_threads
from localfleet.errors import BadInput, NotLoaded, Refused
from localfleet.options import BackendOptions
from localfleet.proto import backend_pb2 as pb
from localfleet_rfdetr.models import Choice, Engine, Found, choose, read_labels

if TYPE_CHECKING:
    from PIL import Image


class DetectOptions(BackendOptions):
    pretrained: bool = Field(
        True,
        description="false: RF-DETR with random weights and no download, a code-path and test aid only "
        "(its detections are noise)",
    )
    num_classes: int | None = Field(None, ge=1, le=10_000, description="RF-DETR's class count (its head)")
    labels: str | None = Field(
        None,
        description="a file of class names (JSON list, JSON object index->name, or one a line), relative to "
        "the models directory; wins over the names an ONNX model or RF-DETR checkpoint carries",
    )
    device: str | None = Field(None, description="cpu, cuda, cuda:1, mps...; default the best there is")
    max_pixels: int = Field(
        4096 * 4096, ge=1, le=pictures.MAX_PIXELS, description="the most pixels an input image may have"
    )
    iou: float = Field(0.7, gt=0, le=1, description="ONNX detectors: overlap above which NMS drops a box")
    input_size: int | None = Field(
        None, ge=32, le=8192, multiple_of=32, description="ONNX detectors with a dynamic input size: its side"
    )
    threads: int = Field(0, ge=0, le=1024, description="ONNX Runtime's threads (0: one a core)")


class RFDetr(Backend):
    name = "rfdetr"
    Options = DetectOptions
    # One image at a time: each engine already uses every core on one.
    default_concurrency = 1

    def __init__(self) -> None:
        self._engine: Engine | None = None
        self._max_pixels = pictures.MAX_PIXELS

    def refuse(self, model: ModelRef) -> str | None:
        chosen = choose(model.name, model.path, model.type)
        return chosen if isinstance(chosen, str) else None

    def load(self, model: ModelRef, options: BaseModel, request: pb.ModelOptions) -> str:
        assert isinstance(options, DetectOptions)
        chosen = choose(model.name, model.path, model.type)
        if isinstance(chosen, str):
            raise Refused(chosen)
        labels = (
            read_labels(beside_model(options.labels, model.model_dir, "labels")) if options.labels else None
        )
        engine = (
            _onnx(chosen, options, labels)
            if chosen.engine == "onnx"
            else _detr(chosen, options, labels, model)
        )
        self._engine, self._max_pixels = engine, options.max_pixels
        return f"{engine.name}: default threshold {engine.default_threshold:g}"

    def unload(self) -> str:
        self._engine = None
        return "model released"

    def memory(self) -> dict[str, int]:
        engine = self._engine
        return {"weights": engine.nbytes()} if engine is not None else {}

    async def Detect(self, request: pb.DetectOptions, call: Call) -> pb.DetectResponse:
        engine = self._engine
        if engine is None:
            raise NotLoaded()
        for field, sent in (("prompt", request.prompt), ("points", request.points), ("boxes", request.boxes)):
            if sent:
                raise BadInput(
                    f"{field}: {engine.name} takes no prompt, points or boxes; send the image alone"
                )
        threshold = request.threshold
        if not 0 <= threshold <= 1:  # NaN too
            shown = "NaN" if math.isnan(threshold) else f"{threshold:g}"
            default = f"{engine.default_threshold:g}"
            raise BadInput(f"threshold must be 0 to 1 (0 = the model's default, {default}), got {shown}")
        found = await call.run(self._detect, engine, request.src, threshold or engine.default_threshold, call)
        found.sort(key=lambda f: f.confidence, reverse=True)
        return pb.DetectResponse(
            Detections=[
                pb.Detection(
                    x=f.x,
                    y=f.y,
                    width=f.width,
                    height=f.height,
                    confidence=f.confidence,
                    class_name=f.class_name,
                    mask=f.mask,
                )
                for f in found
            ]
        )

    def _detect(self, engine: Engine, src: str, threshold: float, call: Call) -> list[Found]:
        image: Image.Image = pictures.from_base64(src, "src", self._max_pixels)
        call.raise_if_stopped()
        return engine.detect(image, threshold)


def _onnx(chosen: Choice, options: DetectOptions, labels: list[str] | None) -> Engine:
    from localfleet_rfdetr.yolo import Settings, YoloOnnx

    if options.num_classes is not None or not options.pretrained:
        raise Refused(
            "num_classes and pretrained are RF-DETR options; an ONNX detector's classes are its own"
        )
    return YoloOnnx(
        Settings(
            path=chosen.checkpoint,
            labels=labels,
            iou=options.iou,
            input_size=options.input_size,
            threads=cap_threads(options.threads),
            device=options.device,
        )
    )


def _detr(chosen: Choice, options: DetectOptions, labels: list[str] | None, model: ModelRef) -> Engine:
    from localfleet_rfdetr.detr import DetrModel, Settings

    if labels is not None and options.num_classes is not None and len(labels) != options.num_classes:
        raise Refused(f"the labels file names {len(labels)} classes but num_classes is {options.num_classes}")
    return DetrModel(
        Settings(
            variant=chosen.variant,
            checkpoint=chosen.checkpoint,
            pretrained=options.pretrained,
            num_classes=options.num_classes,
            labels=labels,
            device=options.device,
            model_dir=model.model_dir,
        )
    )
