"""The build matrix: backend x build type -> what to install, how to compile, which image, which tag.

Data only, read from a source tree: `build-types.toml` (what each build type means) and each
`services/<name>/pyproject.toml` (its `[tool.localfleet]` tables: what the backend installs per build
type, or why it uses its cpu build). `localfleet install`, the Dockerfile, compose, the k8s overlays and
backends-index.yaml all read it through here, so a new backend or build type is one entry.

    python -m localfleet.matrix sh BACKEND BUILD_TYPE   # shell assignments (the Dockerfile)
    python -m localfleet.matrix json                    # every cell
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import tomllib
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

BUILD_TYPES_FILE = "build-types.toml"
_BUILD_TYPE_KEYS = {"extras", "torch", "drop", "no-binary", "build-env", "build-packages", "runtime-packages"}


@dataclass(frozen=True)
class BuildType:
    name: str
    tag: str
    gallery: str
    capability: str
    container: bool
    base_image: str = ""
    runtime_image: str = ""
    python_packages: tuple[str, ...] = ()
    torch_index: str = ""
    runtime_extras: tuple[str, ...] = ()
    compose_gpu: str = ""
    compose_devices: tuple[str, ...] = ()
    compose_groups: tuple[str, ...] = ()
    k8s_resource: str = ""
    k8s_toleration: str = ""


@dataclass(frozen=True)
class BackendPackage:
    """One services/<name>/ folder: an installable package registering one backend."""

    name: str
    folder: Path
    distribution: str
    test_with: tuple[str, ...]  # other backends its tests and benchmarks use (their cpu builds)
    extras: tuple[str, ...]  # its optional-dependency groups
    benchmarks: tuple[str, ...]  # benchmark scripts it owns (type-checked and run in its environment)


@dataclass(frozen=True)
class Build:
    """One cell: `backend` built for `build_type`. `uses` is the build type whose build it takes."""

    backend: str
    build_type: str
    uses: str
    reason: str  # why it uses the cpu build; empty when it has a build of its own
    container: bool
    tag: str  # LocalAI's tag part and gallery prefix of the build it uses
    gallery: str
    extras: tuple[str, ...] = ()
    runtime_extras: tuple[str, ...] = ()
    torch_index: str = ""
    drop: tuple[str, ...] = ()
    no_binary: tuple[str, ...] = ()
    build_env: dict[str, str] = field(default_factory=dict)
    build_packages: tuple[str, ...] = ()
    runtime_packages: tuple[str, ...] = ()
    base_image: str = ""
    runtime_image: str = ""
    python_packages: tuple[str, ...] = ()

    def image_tag(self, channel: str = "latest") -> str:
        """LocalAI's scheme: <channel>-<tag>-<backend>, naming the image this cell really is."""
        return f"{channel}-{self.tag}-{self.backend}"

    def gallery_name(self, development: bool = False) -> str:
        name = f"{self.gallery}-localfleet-{self.backend}"
        return name + "-development" if development else name


@dataclass(frozen=True)
class Matrix:
    root: Path
    build_types: dict[str, BuildType]
    backends: dict[str, BackendPackage]
    cells: dict[tuple[str, str], Build]

    def build(self, backend: str, build_type: str) -> Build:
        if backend not in self.backends:
            raise LookupError(f"unknown backend {backend!r}; known: {', '.join(sorted(self.backends))}")
        if build_type not in self.build_types:
            raise LookupError(f"unknown build type {build_type!r}; known: {', '.join(self.build_types)}")
        return self.cells[(backend, build_type)]


def source_root() -> Path:
    """The source tree: $LOCALFLEET_SOURCE, the checkout this package sits in, or the current folder."""
    here = Path(__file__).resolve().parents[2]
    candidates = [Path(os.environ["LOCALFLEET_SOURCE"])] if os.environ.get("LOCALFLEET_SOURCE") else []
    candidates += [here, Path.cwd()]
    for candidate in candidates:
        if (candidate / BUILD_TYPES_FILE).is_file() and (candidate / "services").is_dir():
            return candidate.resolve()
    raise LookupError(
        "no localfleet source tree here (build-types.toml and services/): run from a checkout, or set "
        "LOCALFLEET_SOURCE to one"
    )


@cache
def matrix(root: Path | None = None) -> Matrix:
    return load(root or source_root())


def load(root: Path) -> Matrix:
    with (root / BUILD_TYPES_FILE).open("rb") as f:
        build_types = {name: _build_type(name, table) for name, table in tomllib.load(f).items()}
    backends: dict[str, BackendPackage] = {}
    tables: dict[str, dict[str, Any]] = {}
    for pyproject in sorted((root / "services").glob("*/pyproject.toml")):
        with pyproject.open("rb") as f:
            data = tomllib.load(f)
        project = data["project"]
        names = list(project.get("entry-points", {}).get("localfleet.backends", {}))
        if len(names) != 1:
            raise ValueError(f"{pyproject}: expected one localfleet.backends entry point, found {names}")
        tool = data.get("tool", {}).get("localfleet", {})
        name = names[0]
        backends[name] = BackendPackage(
            name=name,
            folder=pyproject.parent,
            distribution=project["name"],
            test_with=tuple(tool.get("test-with", ())),
            extras=tuple(project.get("optional-dependencies", {})),
            benchmarks=tuple(tool.get("benchmarks", ())),
        )
        tables[name] = tool
    cells = {
        (name, bt): _cell(name, build_types, bt, tables[name], backends[name].folder)
        for name in backends
        for bt in build_types
    }
    return Matrix(root, build_types, backends, cells)


def _build_type(name: str, table: dict[str, Any]) -> BuildType:
    fields = {key.replace("-", "_"): value for key, value in table.items()}
    for key, value in fields.items():
        if isinstance(value, list):
            fields[key] = tuple(value)
    return BuildType(name=name, **fields)


def _cell(
    backend: str, build_types: dict[str, BuildType], bt: str, tool: dict[str, Any], folder: Path
) -> Build:
    where = f"{folder}/pyproject.toml [tool.localfleet.build-types]"
    declared = tool.get("build-types", {})
    if bt not in declared:
        raise ValueError(f"{where}: no entry for build type {bt!r} (give its build, or uses-cpu = reason)")
    entry = declared[bt]
    kind = build_types[bt]
    if "uses-cpu" in entry:
        cpu = _cell(backend, build_types, "cpu", tool, folder)
        return Build(**{**asdict(cpu), "build_type": bt, "reason": str(entry["uses-cpu"])})
    unknown = set(entry) - _BUILD_TYPE_KEYS
    if unknown:
        raise ValueError(f"{where}.{bt}: unknown keys {sorted(unknown)}; known: {sorted(_BUILD_TYPE_KEYS)}")
    return Build(
        backend=backend,
        build_type=bt,
        uses=bt,
        reason="",
        container=kind.container,
        tag=kind.tag,
        gallery=kind.gallery,
        extras=tuple(entry.get("extras", ())),
        runtime_extras=kind.runtime_extras,
        torch_index=kind.torch_index if entry.get("torch") else "",
        drop=tuple(entry.get("drop", ())),
        no_binary=tuple(entry.get("no-binary", ())),
        build_env={str(k): str(v) for k, v in entry.get("build-env", {}).items()},
        build_packages=tuple(tool.get("build-packages", ())) + tuple(entry.get("build-packages", ())),
        runtime_packages=tuple(tool.get("runtime-packages", ())) + tuple(entry.get("runtime-packages", ())),
        base_image=kind.base_image,
        runtime_image=kind.runtime_image or kind.base_image,
        python_packages=kind.python_packages,
    )


def shell(cell: Build) -> str:
    """Shell assignments for an image build (sourced by the Dockerfile's build stage)."""
    values = {
        "uses": cell.uses,
        "extras": ",".join(cell.extras),
        "runtime_extras": ",".join(cell.runtime_extras),
        "torch_index": cell.torch_index,
        "drop": " ".join(cell.drop),
        "no_binary": ",".join(cell.no_binary),
        "build_env": " ".join(f"{k}={shlex.quote(v)}" for k, v in cell.build_env.items()),
        "build_packages": " ".join(cell.build_packages),
        "runtime_packages": " ".join(cell.runtime_packages),
        "python_packages": " ".join(cell.python_packages),
        "image_tag": cell.image_tag("latest"),
    }
    return "".join(f"{key}={shlex.quote(value)}\n" for key, value in values.items())


def as_json(m: Matrix) -> dict[str, Any]:
    return {
        "build_types": {name: asdict(bt) for name, bt in m.build_types.items()},
        "backends": {
            name: {**asdict(pkg), "folder": str(pkg.folder.relative_to(m.root))}
            for name, pkg in m.backends.items()
        },
        "cells": [asdict(cell) | {"image_tag": cell.image_tag()} for cell in m.cells.values()],
    }


def main(argv: list[str]) -> int:
    if argv[:1] == ["sh"] and len(argv) == 3:
        print(shell(matrix().build(argv[1], argv[2])), end="")
        return 0
    if argv == ["json"]:
        print(json.dumps(as_json(matrix()), indent=2))
        return 0
    print("usage: python -m localfleet.matrix sh BACKEND BUILD_TYPE | json", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
