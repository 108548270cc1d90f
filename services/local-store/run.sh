#!/usr/bin/env bash
# Start the local-store backend. LocalAI core runs `run.sh --addr 127.0.0.1:PORT` with the backend
# folder as cwd; every argument is passed on to `localfleet serve local-store`.
#
# Which localfleet: $LOCALFLEET_VENV if set, else a venv beside this script (a LocalAI backend folder
# or the image's /opt/localfleet), else the repo's .venv (a checkout), else `localfleet` on PATH.
set -euo pipefail

backend=local-store
# Resolve symlinks so that a linked run.sh still finds the checkout it belongs to.
here="$(cd -P -- "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")" && pwd)"
repo="$(cd -P -- "$here/../.." && pwd)"

for venv in "${LOCALFLEET_VENV:-}" "$here/.venv" "$here/venv" "$repo/.venv"; do
    if [[ -n "$venv" && -x "$venv/bin/localfleet" ]]; then
        exec "$venv/bin/localfleet" serve "$backend" "$@"
    fi
done
if command -v localfleet >/dev/null 2>&1; then
    exec localfleet serve "$backend" "$@"
fi
echo "run.sh: no localfleet found (looked in \$LOCALFLEET_VENV, $here/.venv, $here/venv, $repo/.venv and PATH);" \
    "install it with: pip install '.[$backend]'" >&2
exit 127
