"""The rfdetr tests' inputs: nudenet's YOLOv8n detector (a real ONNX model, AGPL, test extra only),
scikit-image's astronaut photograph, and where its face is by a detector that shares nothing with either."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# rfdetr must never reach for a hub: its models here have random weights and nothing to download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def yolo_onnx() -> Path:
    from tests.rfdetr.images import nudenet_onnx

    return nudenet_onnx()


@pytest.fixture(scope="session")
def astronaut() -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data" / "astronaut.png"


@pytest.fixture(scope="session")
def face() -> tuple[float, float, float, float]:
    from tests.rfdetr.images import face_region

    return face_region()
