"""RF-DETR on torch: the only module that imports torch and rfdetr (imported by LoadModel, never at start).

A model is one of rfdetr's classes (RFDETRNano ... RFDETRLarge, RFDETRSeg*) with Roboflow's published
weights, which rfdetr downloads on first use (into the models directory when LoadModel names one, else
rfdetr's cache, RF_HOME), or a checkpoint file (`pretrain_weights=path`; rfdetr reads the variant from it
when no Type names one). `pretrained: false` builds the class with random weights and no download: a code
path and test aid only, its detections are noise.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import rfdetr
import supervision
from PIL import Image

from localfleet.errors import EngineFailure, Refused
from localfleet.inputs import excerpt
from localfleet_rfdetr.models import Found

#: rfdetr's own predict() default
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class Settings:
    variant: str  # an rfdetr class name; "" to read it from the checkpoint
    checkpoint: str  # a .pth file, or ""
    pretrained: bool
    num_classes: int | None
    labels: list[str] | None
    device: str | None
    model_dir: str  # where published weights are downloaded to ("": rfdetr's cache)


class DetrModel:
    default_threshold = DEFAULT_THRESHOLD

    def __init__(self, settings: Settings) -> None:
        kwargs: dict[str, Any] = {}
        if settings.device:
            kwargs["device"] = settings.device
        if settings.num_classes is not None:
            kwargs["num_classes"] = settings.num_classes
        try:
            if settings.checkpoint and not settings.variant:
                self.model = rfdetr.from_checkpoint(settings.checkpoint, **kwargs)
            else:
                cls = getattr(rfdetr, settings.variant)
                kwargs["pretrain_weights"] = _weights(cls, settings)
                self.model = cls(**kwargs)
        except Refused:
            raise
        except Exception as exc:  # a bad checkpoint, no network for the download, an unknown device
            what = settings.checkpoint or settings.variant
            raise Refused(f"rfdetr could not load {excerpt(what, 120)}: {excerpt(str(exc), 300)}") from None
        self.name = type(self.model).__name__
        self.segments = bool(getattr(self.model.model_config, "segmentation_head", False))
        self.labels = settings.labels
        self.device = str(getattr(self.model.model_config, "device", "cpu"))

    def nbytes(self) -> int:
        module = getattr(self.model.model, "model", None)
        if module is None:
            return 0
        return sum(p.numel() * p.element_size() for p in module.parameters())

    def detect(self, image: object, threshold: float) -> list[Found]:
        assert isinstance(image, Image.Image)
        try:
            found = self.model.predict(image, threshold=threshold, include_source_image=False)
        except Exception as exc:
            raise EngineFailure(f"RF-DETR failed on this image: {excerpt(str(exc), 300)}") from None
        if not isinstance(found, supervision.Detections):  # one image in: one Detections out
            raise EngineFailure(f"RF-DETR answered {type(found).__name__}, not detections")
        xyxy = np.asarray(found.xyxy, dtype=np.float64).reshape(-1, 4)
        confidence = np.asarray(found.confidence, dtype=np.float64).reshape(-1)
        ids = np.asarray(found.class_id).reshape(-1).tolist()
        names = found.data.get("class_name")
        masks = found.mask if self.segments else None
        out = []
        xyxy[:, [0, 2]] = np.clip(xyxy[:, [0, 2]], 0, image.width)
        xyxy[:, [1, 3]] = np.clip(xyxy[:, [1, 3]], 0, image.height)
        for i, ((x1, y1, x2, y2), score) in enumerate(zip(xyxy.tolist(), confidence.tolist(), strict=True)):
            mask = _png(masks[i]) if masks is not None else b""
            out.append(Found(x1, y1, x2 - x1, y2 - y1, score, self._class_name(ids[i], names, i), mask))
        return out

    def _class_name(self, class_id: int, names: Any, index: int) -> str:
        if self.labels is not None:
            return self.labels[class_id] if 0 <= class_id < len(self.labels) else str(class_id)
        if names is not None and index < len(names):
            return str(names[index])
        return str(class_id)


def _weights(cls: Any, settings: Settings) -> str | None:
    """pretrain_weights: the checkpoint, None for random weights, or the published file's name (in the
    models directory when it holds it or may be written: rfdetr downloads it there once; else in rfdetr's
    cache, RF_HOME, as for a models folder mounted read-only)."""
    if settings.checkpoint:
        return settings.checkpoint
    if not settings.pretrained:
        return None
    published = cls._model_config_class.model_fields["pretrain_weights"].default
    if not isinstance(published, str) or not published:
        raise Refused(f"{cls.__name__} has no published weights: load a checkpoint, or pretrained:false")
    if not settings.model_dir:
        return published
    there = os.path.join(settings.model_dir, published)
    return there if os.path.isfile(there) or os.access(settings.model_dir, os.W_OK) else published


def _png(mask: Any) -> bytes:
    """A binary mask as an 8-bit greyscale PNG: 255 inside, 0 outside."""
    pixels = np.asarray(mask, dtype=bool).astype(np.uint8) * 255
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()
