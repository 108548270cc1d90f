"""File paths in requests (`dst`, `src`, audio files) are paths on LocalAI core's file system.

A remote backend sees them through a shared volume mounted at the same path in both containers. When
`LOCALFLEET_PATH_ROOTS` is set, a path outside those folders is refused, so a caller cannot make a
backend read or overwrite arbitrary files.
"""

from __future__ import annotations

import os
from pathlib import Path

from localfleet.errors import BadInput, NotFound


class PathPolicy:
    def __init__(self, roots: list[str]) -> None:
        self.roots = [Path(r).resolve() for r in roots]

    def _inside(self, path: str, field: str) -> Path:
        if not path.strip():
            raise BadInput(f"{field} is empty; send a file path")
        resolved = Path(os.path.abspath(path)).resolve()
        if self.roots and not any(resolved.is_relative_to(root) for root in self.roots):
            allowed = ", ".join(str(r) for r in self.roots)
            raise BadInput(
                f"{field} {str(path)!r} is outside the folders this backend may use ({allowed}); mount the "
                "shared volume at the same path as LocalAI core, or add it to LOCALFLEET_PATH_ROOTS"
            )
        return resolved

    def readable(self, path: str, field: str) -> Path:
        """An existing file to read, inside the roots."""
        resolved = self._inside(path, field)
        if not resolved.is_file():
            raise NotFound(
                f"{field} {path!r} does not exist on this backend's file system (is the volume "
                "shared with LocalAI core?)"
            )
        return resolved

    def writable(self, path: str, field: str) -> Path:
        """A file to (over)write, inside the roots, whose folder exists."""
        resolved = self._inside(path, field)
        if resolved.is_dir():
            raise BadInput(f"{field} {path!r} is a folder; send the path of the file to write")
        if not resolved.parent.is_dir():
            raise NotFound(f"{field} {path!r}: folder {str(resolved.parent)!r} does not exist here")
        return resolved
