"""The backends this installation knows, from the `localfleet.backends` entry points (no import needed)."""

from __future__ import annotations

import importlib.metadata as md
import re
from dataclasses import dataclass

from localfleet.backend import Backend

GROUP = "localfleet.backends"
DISTRIBUTION = "localfleet"


@dataclass(frozen=True)
class Entry:
    name: str
    target: str  # "module:Class"

    def missing(self) -> list[str]:
        """Packages of this backend's optional-dependency group that are not installed."""
        return [req for req in _extra_requirements(self.name) if not _installed(req)]

    def load(self) -> type[Backend]:
        cls = md.EntryPoint(self.name, self.target, GROUP).load()
        if not (isinstance(cls, type) and issubclass(cls, Backend)):
            raise TypeError(f"entry point {self.target} is not a localfleet Backend")
        return cls


def entries() -> dict[str, Entry]:
    return {ep.name: Entry(ep.name, ep.value) for ep in md.entry_points(group=GROUP)}


def find(name: str) -> Entry:
    """A registered backend by name, or any Backend class as "module:Class" (a backend in development)."""
    if ":" in name:
        return Entry(name, name)
    known = entries()
    if name not in known:
        raise LookupError(f"unknown backend {name!r}; known: {', '.join(sorted(known)) or 'none'}")
    return known[name]


def _extra_requirements(extra: str) -> list[str]:
    try:
        requires = md.requires(DISTRIBUTION) or []
    except md.PackageNotFoundError:
        return []
    marker = re.compile(r"""extra\s*==\s*["']""" + re.escape(extra) + """["']""")
    return [req.split(";")[0].strip() for req in requires if marker.search(req)]


def _installed(requirement: str) -> bool:
    name = re.split(r"[\s<>=!~\[;]", requirement, maxsplit=1)[0]
    try:
        md.version(name)
    except md.PackageNotFoundError:
        return False
    return True
