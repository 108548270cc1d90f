#!/usr/bin/env bash
# Fill build/wheelhouse/ with everything an offline image build of one backend needs, for the image's
# Python (CPython 3.11, glibc 2.36 x86_64: Debian bookworm), so that the build installs from it alone
# (scripts/backend-folder.sh passes uv --no-index --find-links when it holds wheels).
#
#   scripts/build-wheelhouse.sh [BACKEND [BUILD_TYPE]]     (default: local-store cpu)
#
# The requirements are the build matrix cell's, planned as the image plans them (scripts/cell.py:
# the backend's pyproject, its build type's extras, no-binary, dropped dependencies and torch index),
# resolved by `uv pip compile` for the image's platform and fetched by pip, one file each: wheels, and
# source distributions where there is no wheel or the cell builds from source (llama-cpp-python), with
# the wheels their builds need. Added: the build backend of the tree's own packages (the image builds
# them from the source it copies) and uv, which installs. A wheelhouse may serve several backends.
# Env: PYTHON (a Python >= 3.11 with pip; default the repo's .venv, else python3), WHEELHOUSE, MODELS
#      (1: the backend's bundled start-up model too), UV (else uv on PATH, else pip installs it),
#      WHEEL_PYTHON (3.11), WHEEL_GLIBC (2_36: the newest manylinux tag the image's glibc takes).
set -euo pipefail

repo="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
wheelhouse="${WHEELHOUSE:-$repo/build/wheelhouse}"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$repo/.venv/bin/python" ]]; then PYTHON="$repo/.venv/bin/python"; else PYTHON=python3; fi
fi
backend="${1:-local-store}" build_type="${2:-cpu}"
version="${WHEEL_PYTHON:-3.11}" glibc="${WHEEL_GLIBC:-2_36}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

uv="${UV:-$(command -v uv || true)}"
if [[ -z "$uv" ]]; then
    # The uv `localfleet install` pins (the runtime's `install` extra).
    pin="$("$PYTHON" -c 'import sys, tomllib
with open(sys.argv[1], "rb") as f:
    print(*[r for r in tomllib.load(f)["project"]["optional-dependencies"]["install"] if r.startswith("uv")])
' "$repo/shared/pyproject.toml")"
    "$PYTHON" -m pip install --quiet --disable-pip-version-check --target "$tmp/uv" "$pin"
    uv="$tmp/uv/bin/uv"
fi
if [[ -n "${PIP_FIND_LINKS:-}" && -z "${UV_FIND_LINKS:-}" ]]; then export UV_FIND_LINKS="$PIP_FIND_LINKS"; fi

flags=()
[[ "${MODELS:-1}" != 1 ]] || flags+=(--models)
"$PYTHON" "$repo/scripts/cell.py" install-args "$backend" "$build_type" "${flags[@]}" > "$tmp/args"
# The plan's arguments: requirement specs, and options that each take a value.
specs=() options=() pip_options=()
while read -r arg; do
    if [[ "$arg" == -* ]]; then
        read -r value
        options+=("$arg" "$value")
        case "$arg" in --extra-index-url|--no-binary) pip_options+=("$arg" "$value") ;; esac
    else
        specs+=("$arg")
    fi
done < "$tmp/args"
printf '%s\n' "${specs[@]}" > "$tmp/requirements.in"

# Pinned for the image's platform; the tree's own packages are built in the image, not fetched.
"$uv" pip compile --quiet --no-header --no-annotate --python-version "$version" \
    --python-platform "x86_64-manylinux_$glibc" "${options[@]}" -o "$tmp/lock.txt" "$tmp/requirements.in"
grep -Ev '^(/|\.|file:)|@ ' "$tmp/lock.txt" > "$tmp/pins.txt" || true

platforms=(--platform manylinux2014_x86_64)
for minor in $(seq 17 "${glibc#2_}"); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
target=(--implementation cp --python-version "$version" --abi "cp${version/./}" "${platforms[@]}")
mkdir -p "$wheelhouse"
before="$(find "$wheelhouse" -maxdepth 1 -type f | sort)"
# --no-deps: the lock has them all; it also lets pip take an sdist where no wheel fits.
"$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --dest "$wheelhouse" \
    "${target[@]}" "${pip_options[@]}" -r "$tmp/pins.txt"

# What building from source needs: the tree's build backend, each fetched sdist's, and uv.
"$PYTHON" - "$repo" "$backend" "$wheelhouse" "$tmp/lock.txt" > "$tmp/build.in" <<'PY'
import re
import sys
import tarfile
import tomllib
from pathlib import Path

repo, backend, wheelhouse, lock = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), sys.argv[4]
requires: list[str] = []
for pyproject in (repo / "shared" / "pyproject.toml", repo / "services" / backend / "pyproject.toml"):
    data = tomllib.loads(pyproject.read_text())
    requires += data["build-system"]["requires"]
    if pyproject.parent.name == "shared":
        requires += [r for r in data["project"]["optional-dependencies"]["install"] if r.startswith("uv")]
pins = {re.split("[=<>]", line)[0].lower().replace("_", "-") for line in open(lock) if "==" in line}
for sdist in wheelhouse.glob("*.tar.gz"):
    name = re.sub(r"-[^-]+\.tar\.gz$", "", sdist.name).lower().replace("_", "-")
    if name not in pins:
        continue
    with tarfile.open(sdist) as tar:
        member = next((m for m in tar.getmembers() if m.name.count("/") == 1 and m.name.endswith("/pyproject.toml")), None)
        if member is not None and (f := tar.extractfile(member)) is not None:
            requires += tomllib.loads(f.read().decode()).get("build-system", {}).get("requires", [])
print("\n".join(dict.fromkeys(requires)))
PY
"$uv" pip compile --quiet --no-header --no-annotate --python-version "$version" \
    --python-platform "x86_64-manylinux_$glibc" -o "$tmp/build.txt" "$tmp/build.in"
"$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --dest "$wheelhouse" "${target[@]}" -r "$tmp/build.txt"

after="$(find "$wheelhouse" -maxdepth 1 -type f | sort)"
added="$(comm -13 <(echo "$before") <(echo "$after") | wc -l)"
echo "build-wheelhouse: $backend ($build_type): $(wc -l < "$tmp/pins.txt") packages and" \
    "$(wc -l < "$tmp/build.txt") for building, $added files new, $(echo "$after" | wc -l) in $wheelhouse"
