"""File paths in requests (`dst`, `src`, audio files) are paths on LocalAI core's file system.

A remote backend sees them through a shared volume mounted at the same path in both containers. When
`LOCALFLEET_PATH_ROOTS` is set, a path outside those folders is refused, so a caller cannot make a
backend read or overwrite arbitrary files. A path the operating system rejects (a null byte, a name too
long, a loop of symbolic links) is the client's mistake: BadInput, not an engine failure.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from localfleet.errors import BadInput, NotFound
from localfleet.inputs import excerpt

#: real paths are quoted whole up to this length; only absurd ones are cut
PATH_CHARS = 256
#: Linux's limits (NAME_MAX, PATH_MAX): a longer name or path fails every lookup
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096
_REASONS = {
    errno.ENAMETOOLONG: "is too long for this file system (names up to 255 bytes, paths up to 4096)",
    errno.ELOOP: "goes round a loop of symbolic links",
}


class PathPolicy:
    def __init__(self, roots: list[str]) -> None:
        self.roots = [Path(r).resolve() for r in roots]

    def _inside(self, path: str, field: str) -> Path:
        if not path.strip():
            raise BadInput(f"{field} is empty; send a file path")
        if "\0" in path:
            raise BadInput(f"{field} {_shown(path)} contains a null byte; send a plain file path")
        with _os_checks(path, field):
            resolved = Path(os.path.abspath(path)).resolve()
        if self.roots and not any(resolved.is_relative_to(root) for root in self.roots):
            allowed = ", ".join(str(r) for r in self.roots)
            raise BadInput(
                f"{field} {_shown(path)} is outside the folders this backend may use ({allowed}); mount "
                "the shared volume at the same path as LocalAI core, or add it to LOCALFLEET_PATH_ROOTS"
            )
        return resolved

    def readable(self, path: str, field: str) -> Path:
        """An existing file to read, inside the roots."""
        resolved = self._inside(path, field)
        with _os_checks(path, field):
            found, is_folder, exists = resolved.is_file(), resolved.is_dir(), resolved.exists()
        if is_folder:
            raise BadInput(f"{field} {_shown(path)} is a folder; send the path of a file")
        if exists and not found:
            raise BadInput(
                f"{field} {_shown(path)} is not a regular file (a pipe, socket or device); send the path of "
                "a file"
            )
        if not found:
            raise NotFound(
                f"{field} {_shown(path)} does not exist on this backend's file system (is the volume "
                "shared with LocalAI core?)"
            )
        return resolved

    def model_refusal(self, path: str, models_dir: str | None) -> str | None:
        """Why LoadModel may not open `path` (a file or folder that exists), or None. With roots set, a
        model lies in them or in the operator's models folder (LOCALFLEET_MODEL_PATH); names that are
        not paths here (hub ids, bundled models) are the backend's to resolve."""
        if not self.roots or not path or "\0" in path:
            return None
        try:
            resolved = Path(os.path.abspath(path)).resolve()
            if not resolved.exists():
                return None
        except (OSError, RuntimeError, ValueError):
            return None  # not a usable path: the backend's own checks name the problem
        folders = [*self.roots, *([Path(models_dir).resolve()] if models_dir else [])]
        if any(resolved.is_relative_to(f) for f in folders):
            return None
        allowed = ", ".join(str(f) for f in folders)
        return (
            f"model path {_shown(path)} is outside the folders this backend may read ({allowed}); put "
            "the model there, or add its folder to LOCALFLEET_PATH_ROOTS"
        )

    def writable(self, path: str, field: str, kind: FileKind) -> Path:
        """A `kind` file to (over)write, inside the roots, whose folder exists.

        With or without roots, a write never replaces a file that is not already of its kind (a key
        file, a config, a device), and the name must say the kind: WAV bytes under `x.mp3` mislead.
        """
        resolved = self._inside(path, field)
        with _os_checks(path, field):
            parent_exists = resolved.parent.is_dir()
            existing = resolved.stat() if os.path.lexists(resolved) else None
            ours = existing is not None and stat.S_ISREG(existing.st_mode) and kind.starts(_head(resolved))
        if existing is not None and stat.S_ISDIR(existing.st_mode):
            raise BadInput(f"{field} {_shown(path)} is a folder; send the path of the file to write")
        if resolved.suffix.lower() not in kind.suffixes:
            raise BadInput(
                f"{field} {_shown(path)} does not end in {' or '.join(kind.suffixes)}; this backend writes "
                f"{kind.name} files: name the file for what it holds"
            )
        if existing is not None and not ours:
            raise BadInput(
                f"{field} {_shown(path)} exists and is not a {kind.name} file; this backend replaces only "
                f"{kind.name} files: choose a new name, or remove that file first"
            )
        if not parent_exists:
            folder = _shown(str(resolved.parent))
            raise NotFound(f"{field} {_shown(path)}: folder {folder} does not exist here")
        return resolved


@dataclass(frozen=True)
class FileKind:
    """A kind of file a backend writes: its names, and how its first bytes begin."""

    name: str
    suffixes: tuple[str, ...]
    magic: tuple[tuple[int, bytes], ...]  # (offset, bytes) pairs the head must hold

    def starts(self, head: bytes) -> bool:
        return all(head[at : at + len(mark)] == mark for at, mark in self.magic)


WAV = FileKind("WAV", (".wav", ".wave"), ((0, b"RIFF"), (8, b"WAVE")))
PNG = FileKind("PNG", (".png",), ((0, b"\x89PNG\r\n\x1a\n"),))
MP4 = FileKind("MP4", (".mp4", ".m4v"), ((4, b"ftyp"),))
#: every kind of file a backend here writes
KINDS = (WAV, PNG, MP4)
#: bytes read from an existing file to tell its kind (never quoted back)
HEAD_BYTES = 16


def _head(path: Path) -> bytes:
    with path.open("rb") as file:  # a regular file: the read cannot block
        return file.read(HEAD_BYTES)


def name_refusal(name: str, field: str) -> str | None:
    """Why `name` cannot be a path on any file system here (a null byte, a name or path too long), or
    None. Checked on LoadModel's names before any backend looks them up, so no lookup fails inside."""
    if "\0" in name:
        return f"{field} {_shown(name)} contains a null byte; send a model name or path"
    raw = os.fsencode(name)
    if len(raw) >= MAX_PATH_BYTES or any(len(part) > MAX_NAME_BYTES for part in raw.split(b"/")):
        return f"{field} {_shown(name)} {_REASONS[errno.ENAMETOOLONG]}; send a model name or path"
    return None


def _shown(path: str) -> str:
    return excerpt(path, PATH_CHARS)


@contextmanager
def _os_checks(path: str, field: str) -> Iterator[None]:
    """The operating system's refusals of a request path, as BadInput naming the field."""
    try:
        yield
    except RuntimeError:  # a symbolic link loop, as Path.resolve reports it before Python 3.13
        raise BadInput(f"{field} {_shown(path)} {_REASONS[errno.ELOOP]}; send a path to a file") from None
    except OSError as exc:
        reason = _REASONS.get(exc.errno or 0, f"cannot be looked up here ({exc.strerror or exc})")
        raise BadInput(f"{field} {_shown(path)} {reason}; send a path to a file") from None
