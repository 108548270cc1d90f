"""File paths in requests (`dst`, `src`, audio files) are paths on LocalAI core's file system.

A remote backend sees them through a shared volume mounted at the same path in both containers. When
`LOCALFLEET_PATH_ROOTS` is set, a path outside those folders is refused, so a caller cannot make a
backend read or overwrite arbitrary files. A path the operating system rejects (a null byte, a name too
long, a loop of symbolic links) is the client's mistake: BadInput, not an engine failure.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from localfleet.errors import BadInput, NotFound
from localfleet.inputs import excerpt

#: real paths are quoted whole up to this length; only absurd ones are cut
PATH_CHARS = 256
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
            found, is_folder = resolved.is_file(), resolved.is_dir()
        if is_folder:
            raise BadInput(f"{field} {_shown(path)} is a folder; send the path of a file")
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

    def writable(self, path: str, field: str) -> Path:
        """A file to (over)write, inside the roots, whose folder exists."""
        resolved = self._inside(path, field)
        with _os_checks(path, field):
            is_folder, parent_exists = resolved.is_dir(), resolved.parent.is_dir()
        if is_folder:
            raise BadInput(f"{field} {_shown(path)} is a folder; send the path of the file to write")
        if not parent_exists:
            folder = _shown(str(resolved.parent))
            raise NotFound(f"{field} {_shown(path)}: folder {folder} does not exist here")
        return resolved


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
