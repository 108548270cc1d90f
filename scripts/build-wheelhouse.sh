#!/usr/bin/env bash
# Fill build/wheelhouse/ with every wheel an image needs, for the image's Python (CPython 3.11,
# glibc x86_64), so that the image build installs with `pip --no-index --find-links` and never
# needs a package index from inside the container.
#
#   scripts/build-wheelhouse.sh [EXTRA...]     (default: local-store)
#
# EXTRA names optional-dependency groups of pyproject.toml (a backend, or `nvidia` for cublas12
# images). The project itself is not put in the wheelhouse: the image builds it from the source
# it copies, so the wheelhouse only changes when pinned dependencies change.
# Env: PYTHON (a Python >= 3.11 with pip; default the repo's .venv, else python3), WHEELHOUSE.
set -euo pipefail

repo="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
wheelhouse="${WHEELHOUSE:-$repo/build/wheelhouse}"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$repo/.venv/bin/python" ]]; then PYTHON="$repo/.venv/bin/python"; else PYTHON=python3; fi
fi
extras=("$@")
[[ ${#extras[@]} -gt 0 ]] || extras=(local-store)

# Requirements = the build backend + the runtime + the chosen groups, read from pyproject.toml so
# that there is one place where versions are pinned.
requirements="$(mktemp)"
trap 'rm -f "$requirements"' EXIT
"$PYTHON" - "$repo/pyproject.toml" "${extras[@]}" > "$requirements" <<'PY'
import sys
import tomllib

with open(sys.argv[1], "rb") as f:
    pyproject = tomllib.load(f)
groups = pyproject["project"].get("optional-dependencies", {})
lines = list(pyproject["build-system"]["requires"]) + list(pyproject["project"]["dependencies"])
for extra in sys.argv[2:]:
    if extra not in groups:
        sys.exit(f"build-wheelhouse: no optional-dependency group {extra!r} in pyproject.toml")
    lines += groups[extra]
print("\n".join(lines))
PY

# manylinux tags up to glibc 2.36 (bookworm); pip adds abi3 and py3-none-any by itself.
platforms=(--platform manylinux2014_x86_64)
for minor in $(seq 17 36); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done

mkdir -p "$wheelhouse"
"$PYTHON" -m pip download --quiet --dest "$wheelhouse" --only-binary=:all: \
    --implementation cp --python-version 3.11 --abi cp311 "${platforms[@]}" \
    -r "$requirements"
echo "build-wheelhouse: $(find "$wheelhouse" -name '*.whl' | wc -l) wheels in $wheelhouse for: ${extras[*]}"
