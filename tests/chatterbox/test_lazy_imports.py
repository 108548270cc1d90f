"""chatterbox imports torch, chatterbox, librosa and numpy only when LoadModel runs (engine.py)."""

from __future__ import annotations

from tests.import_probe import imported_before_load


def test_the_engine_is_imported_only_at_load() -> None:
    heavy = ("chatterbox", "torch", "numpy", "librosa", "transformers", "perth", "av")
    assert imported_before_load("chatterbox", heavy) == "none"
