"""coqui imports coqui-tts, torch and numpy only when LoadModel runs (engine.py)."""

from __future__ import annotations

from tests.import_probe import imported_before_load


def test_the_engine_is_imported_only_at_load() -> None:
    heavy = ("TTS", "torch", "torchaudio", "numpy", "transformers", "librosa", "av")
    assert imported_before_load("coqui", heavy) == "none"
