"""Files a backend writes for core (a WAV, a PNG, an MP4): complete on disk, or not there at all.

`replacing(dst, kind)` hands the writer a hidden temporary file in `dst`'s folder and renames it into
place only once the writer returns, after syncing it; then it syncs the folder, so a reported success
always means a complete file on disk, and a failure (or a cancelled call) leaves `dst` as it was. A
killed process cannot clean up: later writes remove such leftovers (`remove_stale_parts`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from localfleet.errors import EngineFailure, Unwritable
from localfleet.paths import KINDS, FileKind

#: a temporary file of ours untouched this long was left by a killed write (a live one grows as it goes)
STALE_PART_SECONDS = 3600.0
_PART_NAME = re.compile(r"\.(.+)\.[0-9a-f]{8}\.part")
# Folders swept lately, and when: a folder of many files is not listed on every write.
_SWEPT: dict[Path, float] = {}
_SWEEP_EVERY = 600.0
_HEAD_BYTES = 12


@contextlib.contextmanager
def replacing(dst: Path, kind: FileKind) -> Iterator[BinaryIO]:
    """Write `dst` (blocking) through a temporary file beside it, renamed into place when the block ends
    without an exception. `kind` is what the file holds (the leftover sweep tells ours by it)."""
    # Created like any new file (0666 less the umask), so core can read it as it reads its own files.
    partial = dst.with_name(f".{dst.name}.{secrets.token_hex(4)}.part")
    try:
        handle = os.fdopen(os.open(partial, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666), "w+b")
    except OSError as exc:
        raise Unwritable(
            f"cannot write in {str(dst.parent)!r}: {exc.strerror or exc} (this backend runs as uid "
            f"{os.getuid()}; the folder must be writable by it)"
        ) from None
    try:
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise
    _sync_folder(dst)
    _sweep_now_and_then(dst.parent)


def _sync_folder(dst: Path) -> None:
    """A rename is durable only once the folder's entries are on disk, not just the file's data."""
    try:
        fd = os.open(dst.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOTSUP):
            return  # a file system that cannot sync a folder: nothing more to do
        raise EngineFailure(
            f"wrote {str(dst)!r} but cannot sync its folder: {exc.strerror or exc}; the file may not "
            "survive a power cut. Check the volume"
        ) from None


def _sweep_now_and_then(folder: Path) -> None:
    now = time.monotonic()
    if now - _SWEPT.get(folder, -_SWEEP_EVERY) < _SWEEP_EVERY:
        return
    _SWEPT[folder] = now
    remove_stale_parts(folder)


def remove_stale_parts(folder: Path, now: float | None = None) -> list[Path]:
    """Remove the temporary files that killed writes left in `folder`; returns those removed.

    Only files surely ours go: named `.{name}.{8 hex}.part` where `name` ends in a suffix of a kind we
    write, a plain file (no link), owned by this user, empty or starting as that kind does, and untouched
    for `STALE_PART_SECONDS`.
    """
    now = time.time() if now is None else now
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []  # best effort: the write itself succeeded
    removed: list[Path] = []
    for entry in entries:
        match = _PART_NAME.fullmatch(entry.name)
        kind = match and _kind_of(match.group(1))
        if kind and _stale_and_ours(entry, kind, now):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def _kind_of(name: str) -> FileKind | None:
    suffix = Path(name).suffix.lower()
    return next((kind for kind in KINDS if suffix in kind.suffixes), None)


def _stale_and_ours(entry: os.DirEntry[str], kind: FileKind, now: float) -> bool:
    try:
        info = entry.stat(follow_symlinks=False)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
            return False
        if now - info.st_mtime < STALE_PART_SECONDS:
            return False
        fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            head = os.read(fd, _HEAD_BYTES)
        finally:
            os.close(fd)
    except OSError:
        return False
    return head == b"" or kind.starts(head)
