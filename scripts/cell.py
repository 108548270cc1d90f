"""One cell of the build matrix, for the shell scripts that build images, folders and wheelhouses.

    python3 scripts/cell.py check BACKEND BUILD_TYPE [--container]
    python3 scripts/cell.py install-args BACKEND BUILD_TYPE [--models] [--offline]

`check` refuses an unknown cell (and, with --container, a build type that has no container image);
`install-args` prints, one a line, what `uv pip install` gets for the cell: the runtime and the backend
from this source tree (not editable) with their extras, and the cell's indexes, no-binary and overrides,
exactly as `localfleet install` plans them (localfleet.environments.plan). Stdlib only, so any Python
>= 3.11 runs it with the source tree's shared/ on sys.path.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shared"))

from localfleet.matrix import Build, load

ROOT = Path(__file__).resolve().parents[1]


def _cell(backend: str, build_type: str, container: bool) -> Build:
    cell = load(ROOT).build(backend, build_type)
    if container and not cell.container:
        raise LookupError(
            f"build type {build_type!r} has no container image (container = false in build-types.toml): "
            f"build the {backend} backend folder natively, on its own platform, with "
            f"scripts/backend-folder.sh {backend} {build_type} DEST"
        )
    return cell


def _install_args(cell: Build, models: bool, offline: bool) -> list[str]:
    from localfleet.environments import plan, reachable

    m = load(ROOT)
    extras = ["models"] if models and "models" in m.backends[cell.backend].extras else []
    index_ok = not offline and (not cell.torch_index or reachable(cell.torch_index))
    steps = plan(
        cell,
        Path("/nonexistent"),  # the install goes to --target; no environment is created
        m=m,
        editable=False,
        extras=extras,
        uv="uv",
        torch_index_reachable=index_ok,
    )
    for note in steps.notes:
        if not offline:
            print(f"cell: {cell.backend} ({cell.build_type}): {note}", file=sys.stderr)
    return steps.args


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cell.py")
    parser.add_argument("command", choices=["check", "install-args"])
    parser.add_argument("backend")
    parser.add_argument("build_type")
    parser.add_argument("--container", action="store_true", help="refuse a build type with no image")
    parser.add_argument("--models", action="store_true", help="add the backend's `models` extra")
    parser.add_argument("--offline", action="store_true", help="no index is asked (a wheelhouse build)")
    args = parser.parse_args(argv)
    try:
        cell = _cell(args.backend, args.build_type, args.container)
    except (LookupError, ValueError) as exc:
        print(f"cell: {exc}", file=sys.stderr)
        return 2
    if args.command == "install-args":
        print("\n".join(_install_args(cell, args.models, args.offline)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
