"""Request paths are checked against LOCALFLEET_PATH_ROOTS before a backend touches them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from localfleet.errors import BadInput, NotFound
from localfleet.paths import WAV, PathPolicy


def test_any_existing_path_is_readable_without_roots(tmp_path: Path) -> None:
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"RIFF")
    assert PathPolicy([]).readable(str(audio), "dst") == audio.resolve()


def test_a_path_outside_the_roots_is_refused_naming_them(tmp_path: Path) -> None:
    inside = tmp_path / "shared"
    inside.mkdir()
    policy = PathPolicy([str(inside)])
    with pytest.raises(BadInput, match="outside the folders this backend may use"):
        policy.writable(str(tmp_path / "elsewhere.wav"), "dst", WAV)
    with pytest.raises(BadInput, match="outside"):
        policy.readable(str(inside / ".." / "escape.wav"), "src")
    assert policy.writable(str(inside / "out.wav"), "dst", WAV) == (inside / "out.wav").resolve()


def test_a_missing_file_or_folder_is_not_found(tmp_path: Path) -> None:
    policy = PathPolicy([])
    with pytest.raises(NotFound, match="does not exist"):
        policy.readable(str(tmp_path / "missing.wav"), "dst")
    with pytest.raises(NotFound, match="does not exist here"):
        policy.writable(str(tmp_path / "no" / "out.wav"), "dst", WAV)
    with pytest.raises(BadInput, match="empty"):
        policy.readable("", "dst")
    with pytest.raises(BadInput, match="is a folder; send the path of a file"):
        policy.readable(str(tmp_path), "dst")


def wav_bytes() -> bytes:
    return b"RIFF" + (36).to_bytes(4, "little") + b"WAVEfmt "


def test_a_write_replaces_only_a_file_of_its_kind(tmp_path: Path) -> None:
    # Without roots a TTS dst once replaced a 0600 authorized_keys with a WAV.
    policy = PathPolicy([])
    keys = tmp_path / "authorized_keys.wav"
    keys.write_bytes(b"ssh-ed25519 AAAA... user@host\n")
    with pytest.raises(BadInput, match=r"exists and is not a WAV file; .* choose a new name") as err:
        policy.writable(str(keys), "dst", WAV)
    assert "ssh-ed25519" not in str(err.value)  # the file's content is never quoted
    old = tmp_path / "old.wav"
    old.write_bytes(wav_bytes())
    assert policy.writable(str(old), "dst", WAV) == old.resolve()
    assert policy.writable(str(tmp_path / "new.WAV"), "dst", WAV) == (tmp_path / "new.WAV").resolve()


def test_a_write_under_another_format_s_name_is_refused(tmp_path: Path) -> None:
    for name in ("x.mp3", "x", "authorized_keys"):
        with pytest.raises(BadInput, match=r"does not end in \.wav or \.wave; this backend writes WAV files"):
            PathPolicy([]).writable(str(tmp_path / name), "dst", WAV)


def test_a_write_never_replaces_a_device_or_a_pipe(tmp_path: Path) -> None:
    pipe = tmp_path / "pipe.wav"
    os.mkfifo(pipe)  # reading it to check its kind would block: its type alone refuses it
    with pytest.raises(BadInput, match="is not a WAV file"):
        PathPolicy([]).writable(str(pipe), "dst", WAV)
    link = tmp_path / "null.wav"
    link.symlink_to("/dev/null")  # the link's target is what would be written
    with pytest.raises(BadInput, match="WAV file"):
        PathPolicy([]).writable(str(link), "dst", WAV)


def test_a_pipe_to_read_is_named_as_such_not_missing(tmp_path: Path) -> None:
    pipe = tmp_path / "audio.wav"
    os.mkfifo(pipe)
    with pytest.raises(BadInput, match=r"is not a regular file \(a pipe, socket or device\)"):
        PathPolicy([]).readable(str(pipe), "dst")
