"""bark-cpp imports bark_cpp, numpy and scipy only when LoadModel runs (engine.py)."""

from __future__ import annotations

from tests.import_probe import imported_before_load


def test_the_engine_is_imported_only_at_load() -> None:
    assert imported_before_load("bark-cpp", ("bark_cpp", "numpy", "scipy")) == "none"
