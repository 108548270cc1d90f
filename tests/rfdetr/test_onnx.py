"""Detect over real gRPC on a real YOLOv8n detector (nudenet's 320n.onnx, 18 classes) and a real photograph.

Where the face is comes from scikit-image's face cascade (tests/rfdetr/images.py), never from this
model's own output; every other expectation is a relation (subsets, order, bounds), not a number.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from PIL import Image

from localfleet.proto import backend_pb2 as pb
from localfleet.testing import Served, serving
from localfleet_rfdetr.models import Engine, Found
from localfleet_rfdetr.servicer import RFDetr
from tests.rfdetr.images import Box, b64, iou, placed, without_metadata

pytestmark = pytest.mark.asyncio(loop_scope="module")

FACE = "FACE_FEMALE"
#: the class names nudenet's model carries in its metadata (a labels file for the stripped copy)
NAMES = [f"part {i}" for i in range(18)]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def detector(yolo_onnx: Path) -> AsyncIterator[Served]:
    async with serving(RFDetr()) as served:
        result = await served.client.backend.LoadModel(pb.ModelOptions(Model=str(yolo_onnx)))
        assert result.success, result.message
        assert result.message == "ONNX detector 320n.onnx: default threshold 0.25"
        yield served


async def detect(served: Served, **fields: Any) -> list[pb.Detection]:
    reply: pb.DetectResponse = await served.client.backend.Detect(pb.DetectOptions(**fields))
    return list(reply.Detections)


async def error_of(served: Served, **fields: Any) -> GRPCError:
    with pytest.raises(GRPCError) as err:
        await detect(served, **fields)
    return err.value


def box(d: pb.Detection) -> Box:
    return (d.x, d.y, d.width, d.height)


def faces(found: list[pb.Detection]) -> list[pb.Detection]:
    return [d for d in found if d.class_name == FACE]


# -- what comes out --------------------------------------------------------------------------------------
async def test_a_face_box_lands_on_the_astronauts_face(detector: Served, astronaut: Path, face: Box) -> None:
    found = await detect(detector, src=b64(astronaut))
    assert [d.class_name for d in found] == [FACE]  # nothing else in the photograph reaches 0.25
    (hit,) = found
    # x, y are the top-left corner: read as the centre, the box would sit half a face lower and right.
    assert iou(box(hit), face) > 0.5, (box(hit), face)
    assert 0.25 <= hit.confidence <= 1
    assert hit.mask == b""


async def test_boxes_map_back_to_a_picture_of_another_shape(
    detector: Served, astronaut: Path, face: Box
) -> None:
    # Wider than tall, the photograph off centre: the letterbox pads above and below, scales by 320/900.
    picture = placed(astronaut, 300, 40, (900, 600))
    found = faces(await detect(detector, src=b64(picture)))
    assert found, "no face found in the placed photograph"
    moved = (face[0] + 300, face[1] + 40, face[2], face[3])
    assert iou(box(found[0]), moved) > 0.5, (box(found[0]), moved)


async def test_a_data_uri_is_the_same_image(detector: Served, astronaut: Path) -> None:
    raw = await detect(detector, src=b64(astronaut))
    uri = await detect(detector, src="data:image/png;base64," + b64(astronaut))
    assert raw == uri
    jpeg = await detect(detector, src=b64(Image.open(astronaut).convert("RGB"), "JPEG"))
    assert [d.class_name for d in jpeg] == [FACE]


async def test_detections_are_sorted_and_inside_the_image(detector: Served, astronaut: Path) -> None:
    picture = placed(astronaut, 20, 60, (560, 600))
    found = await detect(detector, src=b64(picture), threshold=0.01)
    assert len(found) >= 3
    confidences = [d.confidence for d in found]
    assert confidences == sorted(confidences, reverse=True)
    for d in found:
        assert 0.01 <= d.confidence <= 1
        assert d.class_name in _metadata_names()
        assert d.width > 0
        assert d.height > 0
        assert 0 <= d.x <= d.x + d.width <= picture.width + 1e-3
        assert 0 <= d.y <= d.y + d.height <= picture.height + 1e-3


async def test_a_higher_threshold_keeps_a_subset(detector: Served, astronaut: Path) -> None:
    src = b64(astronaut)
    low = await detect(detector, src=src, threshold=0.01)
    mid = await detect(detector, src=src, threshold=0.1)
    high = await detect(detector, src=src, threshold=0.9)
    assert len(high) < len(mid) < len(low)
    assert all(d in low for d in mid)
    assert all(d.confidence >= 0.1 for d in mid)
    assert all(d.confidence >= 0.9 for d in high)
    default = await detect(detector, src=src)
    assert default == await detect(detector, src=src, threshold=0.25)
    assert default == [d for d in low if d.confidence >= 0.25]


class Reversed:
    """An engine that answers in the worst order: the servicer, not the engine, owes the sort."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.name = engine.name
        self.default_threshold = engine.default_threshold

    def detect(self, image: object, threshold: float) -> list[Found]:
        return sorted(self.engine.detect(image, threshold), key=lambda f: f.confidence)

    def nbytes(self) -> int:
        return self.engine.nbytes()


async def test_the_reply_is_sorted_whatever_order_the_engine_answers_in(
    yolo_onnx: Path, astronaut: Path
) -> None:
    backend = RFDetr()
    async with serving(backend) as served:
        assert (await served.client.backend.LoadModel(pb.ModelOptions(Model=str(yolo_onnx)))).success
        assert backend._engine is not None
        backend._engine = Reversed(backend._engine)
        found = await detect(served, src=b64(astronaut), threshold=0.01)
    assert len(found) >= 3
    confidences = [d.confidence for d in found]
    assert confidences == sorted(confidences, reverse=True)


def _metadata_names() -> list[str]:
    return [
        "FEMALE_GENITALIA_COVERED", "FACE_FEMALE", "BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED",
        "FEMALE_GENITALIA_EXPOSED", "MALE_BREAST_EXPOSED", "ANUS_EXPOSED", "FEET_EXPOSED", "BELLY_COVERED",
        "FEET_COVERED", "ARMPITS_COVERED", "ARMPITS_EXPOSED", "FACE_MALE", "BELLY_EXPOSED",
        "MALE_GENITALIA_EXPOSED", "ANUS_COVERED", "FEMALE_BREAST_COVERED", "BUTTOCKS_COVERED",
    ]  # fmt: skip


# -- class names -----------------------------------------------------------------------------------------
async def test_class_names_come_from_a_labels_file_or_are_the_index(
    yolo_onnx: Path, astronaut: Path, tmp_path: Path
) -> None:
    bare = without_metadata(yolo_onnx, tmp_path / "bare.onnx")
    (tmp_path / "names.json").write_text(json.dumps(NAMES))
    (tmp_path / "names.txt").write_text("\n".join(NAMES) + "\n")
    src = b64(astronaut)
    async with serving(RFDetr()) as served:
        load = served.client.backend.LoadModel
        # No names in the model and no labels: the class index; no input size recorded: input_size.
        assert (await load(pb.ModelOptions(Model=str(bare), Options=["input_size:320"]))).success
        assert [d.class_name for d in await detect(served, src=src)] == ["1"]
        for labels in ("names.json", "names.txt"):
            options = [f"labels:{labels}", "input_size:320"]
            loaded = await load(pb.ModelOptions(Model=str(bare), ModelPath=str(tmp_path), Options=options))
            assert loaded.success, loaded.message
            assert [d.class_name for d in await detect(served, src=src)] == ["part 1"]
        # A labels file wins over the model's own names.
        options = [f"labels:{tmp_path / 'names.json'}"]
        assert (await load(pb.ModelOptions(Model=str(yolo_onnx), Options=options))).success
        assert [d.class_name for d in await detect(served, src=src)] == ["part 1"]


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["labels:short.json"], "the labels file names 3 classes but the model scores 18"),
        (["labels:missing.json"], "labels file not found"),
        (["num_classes:3"], "num_classes and pretrained are RF-DETR options"),
        (["iou:0"], "option 'iou'"),
        (["input_size:100"], "option 'input_size'"),
        (["device:tpu"], "device 'tpu'"),
    ],
)
async def test_a_load_it_cannot_do_is_refused_by_name(
    yolo_onnx: Path, tmp_path: Path, options: list[str], named: str
) -> None:
    (tmp_path / "short.json").write_text('["a", "b", "c"]')
    async with serving(RFDetr()) as served:
        request = pb.ModelOptions(Model=str(yolo_onnx), ModelPath=str(tmp_path), Options=options)
        result = await served.client.backend.LoadModel(request)
        assert not result.success
        assert named in result.message


@pytest.mark.parametrize(
    ("model", "named"),
    [
        (pb.ModelOptions(Model="/nowhere/model.onnx"), "does not exist"),
        (pb.ModelOptions(Model="gpt2"), "it serves RF-DETR"),
        (pb.ModelOptions(Model="x", Type="StableDiffusion"), "Type 'StableDiffusion' is neither"),
    ],
)
async def test_a_model_it_does_not_serve_is_refused_fast(model: pb.ModelOptions, named: str) -> None:
    async with serving(RFDetr()) as served:
        result = await served.client.backend.LoadModel(model)
        assert not result.success
        assert named in result.message


# -- what is refused -------------------------------------------------------------------------------------
def _truncated(astronaut: Path) -> str:
    return b64(Path(astronaut)).encode()[:20000].decode()  # whole base64 quanta of a cut-off PNG


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({}, "src is empty"),
        ({"src": ""}, "src is empty"),
        ({"src": "not base64!"}, "src is not base64"),
        ({"src": "aGVsbG8gd29ybGQ="}, "src is not an image"),
        ({"src": "TRUNCATED"}, "src could not be decoded"),
        ({"threshold": -0.1}, "threshold must be 0 to 1 (0 = the model's default, 0.25), got -0.1"),
        ({"threshold": 1.5}, "threshold must be 0 to 1"),
        ({"threshold": math.nan}, "got NaN"),
        ({"prompt": "a face"}, "prompt: ONNX detector 320n.onnx takes no prompt"),
        ({"points": [10.0, 20.0]}, "points: ONNX detector"),
        ({"boxes": [1.0, 2.0, 3.0, 4.0]}, "boxes: ONNX detector"),
    ],
)
async def test_bad_input_is_refused_by_name_and_it_serves_on(
    detector: Served, astronaut: Path, fields: dict[str, Any], named: str
) -> None:
    if fields.get("src") == "TRUNCATED":
        fields["src"] = _truncated(astronaut)
    if fields and "src" not in fields:  # the image is fine: the other field is what is wrong
        fields["src"] = b64(astronaut)
    err = await error_of(detector, **fields)
    assert err.status == Status.INVALID_ARGUMENT, err.message
    assert named in str(err.message)
    assert await detector.client.healthy(timeout=1.0)
    assert [d.class_name for d in await detect(detector, src=b64(astronaut))] == [FACE]


async def test_an_image_over_max_pixels_is_refused(yolo_onnx: Path, astronaut: Path) -> None:
    async with serving(RFDetr()) as served:
        options = ["max_pixels:250000"]  # the 512x512 photograph is 262,144
        assert (
            await served.client.backend.LoadModel(pb.ModelOptions(Model=str(yolo_onnx), Options=options))
        ).success
        err = await error_of(served, src=b64(astronaut))
        assert err.status == Status.INVALID_ARGUMENT
        assert "src is 512x512 pixels, over the 250,000" in str(err.message)
        small = Image.open(astronaut).convert("RGB").resize((400, 400))
        assert faces(await detect(served, src=b64(small)))


async def test_detect_before_load_is_a_failed_precondition(astronaut: Path) -> None:
    async with serving(RFDetr()) as served:
        err = await error_of(served, src=b64(astronaut))
        assert err.status == Status.FAILED_PRECONDITION
