"""The rfdetr process listens before torch, rfdetr or onnxruntime is imported: they come with LoadModel."""

from __future__ import annotations

from tests.import_probe import imported_before_load


def test_serving_imports_no_engine_before_load() -> None:
    heavy = ("torch", "torchvision", "rfdetr", "supervision", "onnxruntime", "numpy", "PIL")
    assert imported_before_load("rfdetr", heavy) == "none"
