"""Request paths are checked against LOCALFLEET_PATH_ROOTS before a backend touches them."""

from __future__ import annotations

from pathlib import Path

import pytest

from localfleet.errors import BadInput, NotFound
from localfleet.paths import PathPolicy


def test_any_existing_path_is_readable_without_roots(tmp_path: Path) -> None:
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"RIFF")
    assert PathPolicy([]).readable(str(audio), "dst") == audio.resolve()


def test_a_path_outside_the_roots_is_refused_naming_them(tmp_path: Path) -> None:
    inside = tmp_path / "shared"
    inside.mkdir()
    policy = PathPolicy([str(inside)])
    with pytest.raises(BadInput, match="outside the folders this backend may use"):
        policy.writable(str(tmp_path / "elsewhere.wav"), "dst")
    with pytest.raises(BadInput, match="outside"):
        policy.readable(str(inside / ".." / "escape.wav"), "src")
    assert policy.writable(str(inside / "out.wav"), "dst") == (inside / "out.wav").resolve()


def test_a_missing_file_or_folder_is_not_found(tmp_path: Path) -> None:
    policy = PathPolicy([])
    with pytest.raises(NotFound, match="does not exist"):
        policy.readable(str(tmp_path / "missing.wav"), "dst")
    with pytest.raises(NotFound, match="does not exist here"):
        policy.writable(str(tmp_path / "no" / "out.wav"), "dst")
    with pytest.raises(BadInput, match="empty"):
        policy.readable("", "dst")
    with pytest.raises(BadInput, match="is a folder; send the path of a file"):
        policy.readable(str(tmp_path), "dst")
