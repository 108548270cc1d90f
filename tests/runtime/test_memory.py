"""Status memory figures never fail, also while a backend is halfway through importing torch; room for a
second model beside the one serving."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from localfleet import memory


def test_a_half_imported_torch_does_not_break_memory_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", types.ModuleType("torch"))  # no `cuda` attribute yet
    figures = memory.process_memory()
    assert figures["rss"] > 0
    memory.release_device_caches()


def test_room_beside_weighs_the_model_on_disk_against_free_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_bytes(b"{}" * 50)
    (folder / "sub" / "weights.bin").write_bytes(b"w" * 900)
    assert memory.disk_bytes(str(folder)) == 1000
    assert memory.disk_bytes(str(tmp_path / "none")) is None
    assert memory.room_beside(str(folder)) is None  # 1000 bytes fit
    free = SimpleNamespace(available=memory.BESIDE_HEADROOM + 999)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: free)
    reason = memory.room_beside(str(folder))
    assert reason is not None
    assert "do not fit in memory together" in reason
