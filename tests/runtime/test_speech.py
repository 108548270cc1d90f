"""The file write shared by every backend that writes files (here through TTS's), without an engine:
durable rename, leftovers."""

from __future__ import annotations

import os
import stat
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpclib.const import Status

from localfleet import files
from localfleet.errors import Unwritable
from localfleet.speech import Utterance, write_wav

HEADER = b"RIFF\x24\x00\x00\x00WAVEfmt "


def tone() -> Utterance:
    def pcm() -> Iterator[bytes]:
        yield b"\x00\x10" * 800

    return Utterance(sample_rate=16000, pcm=pcm, speaker="a test tone")


def no_stop() -> None:
    return None


def test_the_folder_is_synced_after_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dst = tmp_path / "out.wav"
    folder = tmp_path.stat()
    # Whether dst was in place each time the folder itself was synced.
    folder_syncs: list[bool] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode) and (info.st_dev, info.st_ino) == (folder.st_dev, folder.st_ino):
            folder_syncs.append(dst.exists())
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    written = write_wav(dst, tone(), no_stop)
    assert folder_syncs == [True]
    assert written.frames == 800
    with wave.open(str(dst)) as wav:
        assert wav.getnframes() == 800


def _make(path: Path, data: bytes, age: float) -> Path:
    path.write_bytes(data)
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def test_a_write_removes_stale_leftovers_of_killed_writes_and_nothing_else(tmp_path: Path) -> None:
    old = files.STALE_PART_SECONDS + 60
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
    wav = HEADER + b"\x00" * 32
    removed = {
        _make(tmp_path / ".song.wav.0123abcd.part", wav, old),
        _make(tmp_path / ".empty.wav.89abcdef.part", b"", old),  # killed before its first chunk
        _make(tmp_path / ".image.png.0123abcd.part", png, old),  # an image backend's, same folder
    }
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = _make(elsewhere / "target.wav", wav, old)
    link = tmp_path / ".link.wav.0badcafe.part"
    link.symlink_to(target)
    (tmp_path / ".dir.wav.00000000.part").mkdir()
    kept = {
        _make(tmp_path / ".live.wav.fedcba98.part", wav, 5),  # a write in progress elsewhere
        _make(tmp_path / ".song.wav.part", wav, old),
        _make(tmp_path / "song.wav.0123abcd.part", wav, old),
        _make(tmp_path / ".song.wav.0123ABCD.part", wav, old),
        _make(tmp_path / ".song.wav.0123abcd.part.bak", wav, old),
        _make(tmp_path / ".notes.txt.0123abcd.part", b"my notes", old),  # not a WAV file
        _make(tmp_path / ".notes.png.0123abcd.part", b"my notes", old),  # named PNG, holds none
        _make(tmp_path / ".song.png.0123abcd.part", wav, old),  # a WAV under a PNG name
        link,
        tmp_path / ".dir.wav.00000000.part",
        elsewhere,
    }
    if os.geteuid() == 0:
        foreign = _make(tmp_path / ".theirs.wav.11111111.part", wav, old)
        os.chown(foreign, os.getuid() + 4321, -1)
        kept.add(foreign)

    write_wav(tmp_path / "new.wav", tone(), no_stop)

    assert set(tmp_path.iterdir()) == kept | {tmp_path / "new.wav"}
    assert not any(path.exists() for path in removed)
    assert target.read_bytes() == wav


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc, a folder no file can be made in")
def test_a_folder_no_file_can_be_made_in_is_a_precondition_not_an_engine_fault() -> None:
    # /proc/x.wav was INTERNAL: the path is the caller's or the deployment's to fix.
    with pytest.raises(Unwritable, match=r"cannot write in '/proc'") as err:
        write_wav(Path("/proc/x.wav"), tone(), no_stop)
    assert err.value.status == Status.FAILED_PRECONDITION
