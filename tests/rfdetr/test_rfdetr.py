"""Detect over real gRPC on RF-DETR with random weights (`pretrained:false`: no download, nothing to
download here); what it must answer is the same model's own predict(), called in this process on the
servicer's loaded model with the same image and threshold."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
import supervision as sv
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from PIL import Image

from localfleet.proto import backend_pb2 as pb
from localfleet.testing import Served, serving
from localfleet_rfdetr.detr import DetrModel
from localfleet_rfdetr.servicer import RFDetr
from tests.rfdetr.images import b64, placed

pytestmark = pytest.mark.asyncio(loop_scope="module")

RANDOM = ["pretrained:false", "num_classes:3", "device:cpu"]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def nano() -> AsyncIterator[tuple[Served, RFDetr]]:
    backend = RFDetr()
    async with serving(backend) as served:
        result = await served.client.backend.LoadModel(pb.ModelOptions(Model="rfdetr-nano", Options=RANDOM))
        assert result.success, result.message
        assert result.message == "RFDETRNano: default threshold 0.5"
        yield served, backend


@pytest.fixture(scope="module")
def picture(astronaut: Path) -> Image.Image:
    return placed(astronaut, 16, 8, (560, 540)).resize((280, 270))


def predict(backend: RFDetr, image: Image.Image, threshold: float) -> sv.Detections:
    """The loaded model's own predict(), in this process."""
    found = bare(backend).model.predict(image, threshold=threshold)
    assert isinstance(found, sv.Detections)
    return found


def bare(backend: RFDetr) -> DetrModel:
    engine = backend._engine
    assert isinstance(engine, DetrModel)
    return engine


async def detect(served: Served, **fields: Any) -> list[pb.Detection]:
    reply: pb.DetectResponse = await served.client.backend.Detect(pb.DetectOptions(**fields))
    return list(reply.Detections)


async def test_detections_are_the_models_own_predictions(
    nano: tuple[Served, RFDetr], picture: Image.Image
) -> None:
    served, backend = nano
    # Random weights score low: a threshold at the median of what it finds keeps about half.
    everything = predict(backend, picture, 0.0)
    assert everything.confidence is not None
    threshold = float(np.median(everything.confidence))
    expected = predict(backend, picture, threshold)
    assert expected.confidence is not None
    assert 0 < len(expected) < len(everything)
    found = await detect(served, src=b64(picture), threshold=threshold)
    assert len(found) == len(expected)
    order = np.argsort(-expected.confidence, kind="stable")
    for d, i in zip(found, order.tolist(), strict=True):
        x1, y1, x2, y2 = expected.xyxy[i].tolist()
        # Top-left corner, width and height, in the input's pixels (rfdetr's xyxy within the image).
        assert (d.x, d.y, d.width, d.height) == pytest.approx((x1, y1, x2 - x1, y2 - y1), abs=1e-3)
        assert d.confidence == pytest.approx(float(expected.confidence[i]), abs=1e-6)
        assert d.class_name == expected.data["class_name"][i]
        assert d.mask == b""
        assert 0 <= d.x <= d.x + d.width <= picture.width + 1e-3
        assert 0 <= d.y <= d.y + d.height <= picture.height + 1e-3
    confidences = [d.confidence for d in found]
    assert confidences == sorted(confidences, reverse=True)
    assert all(c >= threshold - 1e-6 for c in confidences)


async def test_threshold_zero_is_rfdetrs_default(nano: tuple[Served, RFDetr], picture: Image.Image) -> None:
    served, backend = nano
    expected = predict(backend, picture, 0.5)
    assert len(await detect(served, src=b64(picture))) == len(expected)
    high = await detect(served, src=b64(picture), threshold=0.999)
    low = await detect(served, src=b64(picture), threshold=0.001)
    assert len(high) <= len(low)
    assert all(d in low for d in high)


async def test_prompts_are_refused_by_name(nano: tuple[Served, RFDetr], picture: Image.Image) -> None:
    served, _ = nano
    for field, value in (("prompt", "a cat"), ("points", [1.0, 2.0]), ("boxes", [0.0, 0.0, 5.0, 5.0])):
        with pytest.raises(GRPCError) as err:
            await detect(served, src=b64(picture), **{field: value})
        assert err.value.status == Status.INVALID_ARGUMENT
        assert f"{field}: RFDETRNano takes no prompt" in str(err.value.message)


async def test_a_segmentation_model_sends_a_png_mask_per_detection(picture: Image.Image) -> None:
    small = picture.resize((96, 80))
    async with serving(RFDetr()) as served:
        load = pb.ModelOptions(Model="seg", Type="RFDETRSegNano", Options=RANDOM)
        result = await served.client.backend.LoadModel(load)
        assert result.success, result.message
        found = await detect(served, src=b64(small), threshold=0.001)
    assert found
    for d in found[:5]:
        with Image.open(io.BytesIO(d.mask)) as mask:
            assert mask.format == "PNG"
            assert mask.size == small.size
            assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}


@pytest.mark.parametrize(
    ("model", "named"),
    [
        (pb.ModelOptions(Model="rfdetr-nano", Options=["pretrained:false", "num_classes:0"]), "num_classes"),
        (pb.ModelOptions(Model="rfdetr-huge"), "it serves RF-DETR"),
        (
            pb.ModelOptions(Model="rfdetr-nano", Options=["pretrained:false", "device:warp"]),
            "rfdetr could not",
        ),
    ],
)
async def test_a_load_it_cannot_do_is_refused_by_name(model: pb.ModelOptions, named: str) -> None:
    async with serving(RFDetr()) as served:
        result = await served.client.backend.LoadModel(model)
        assert not result.success
        assert named in result.message
