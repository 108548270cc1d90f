"""kitten-tts imports kittenml, ONNX Runtime and numpy only when LoadModel runs (engine.py)."""

from __future__ import annotations

from tests.import_probe import imported_before_load


def test_the_engine_is_imported_only_at_load() -> None:
    heavy = ("kittenml", "onnxruntime", "numpy", "phonemizer", "soundfile", "huggingface_hub")
    assert imported_before_load("kitten-tts", heavy) == "none"
