"""The backends this environment holds, from the `localfleet.backends` entry points (no import needed)."""

from __future__ import annotations

import importlib.metadata as md
import re
from dataclasses import dataclass

from localfleet.backend import Backend

GROUP = "localfleet.backends"


@dataclass(frozen=True)
class Entry:
    name: str
    target: str  # "module:Class"
    distribution: str = ""  # the package that registered it (localfleet-<name>)

    def missing(self) -> list[str]:
        """Packages the backend's own package requires that are not installed here."""
        return [req for req in _requirements(self.distribution) if not _installed(req)]

    def load(self) -> type[Backend]:
        cls = md.EntryPoint(self.name, self.target, GROUP).load()
        if not (isinstance(cls, type) and issubclass(cls, Backend)):
            raise TypeError(f"entry point {self.target} is not a localfleet Backend")
        return cls


def entries() -> dict[str, Entry]:
    found = {}
    for ep in md.entry_points(group=GROUP):
        dist = ep.dist.metadata["Name"] if ep.dist is not None else ""
        found[ep.name] = Entry(ep.name, ep.value, dist)
    return found


def find(name: str) -> Entry:
    """A registered backend by name, or any Backend class as "module:Class" (a backend in development)."""
    if ":" in name:
        return Entry(name, name)
    known = entries()
    if name not in known:
        raise LookupError(
            f"unknown backend {name!r} in this environment (it holds: {', '.join(sorted(known)) or 'none'}); "
            "`localfleet list` shows every backend and where it is installed"
        )
    return known[name]


def _requirements(distribution: str) -> list[str]:
    if not distribution:
        return []
    try:
        requires = md.requires(distribution) or []
    except md.PackageNotFoundError:
        return []
    # Its own dependencies, not those of its optional groups (models, tests, other build types).
    own = [req for req in requires if ";" not in req or "extra" not in req.split(";", 1)[1]]
    return [req.split(";")[0].strip() for req in own]


def _installed(requirement: str) -> bool:
    name = re.split(r"[\s<>=!~\[;]", requirement, maxsplit=1)[0]
    try:
        md.version(name)
    except md.PackageNotFoundError:
        return False
    return True
