"""Status memory figures never fail, also while a backend is halfway through importing torch."""

from __future__ import annotations

import sys
import types

import pytest

from localfleet import memory


def test_a_half_imported_torch_does_not_break_memory_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", types.ModuleType("torch"))  # no `cuda` attribute yet
    figures = memory.process_memory()
    assert figures["rss"] > 0
    memory.release_device_caches()
