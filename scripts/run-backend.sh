#!/usr/bin/env bash
# Start one localfleet backend. LocalAI core runs `<backend folder>/run.sh --addr 127.0.0.1:PORT` with that
# folder as cwd; every argument is passed on to `localfleet serve <backend>`. Each services/<backend>/run.sh
# is a link to this one script: the backend is named by a BACKEND file beside run.sh (images write one),
# else by the name of the folder run.sh was called from.
#
# Which localfleet: $LOCALFLEET_VENV if set; else the folder's own bin/localfleet (a backend folder made
# by scripts/backend-folder.sh: a LocalAI gallery install, or an image's /opt/localfleet, with its own
# Python); else a venv beside run.sh (`localfleet install`); else the repo's .venv; else PATH.
set -euo pipefail

# Where run.sh was called from (not where the link points): that folder names the backend.
here="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
if [[ -f "$here/BACKEND" ]]; then
    backend="$(<"$here/BACKEND")"
else
    backend="$(basename -- "$here")"
fi
repo="$(cd -P -- "$here/../.." && pwd)"
# Core launches run.sh: the backend exits when core dies, unless core's environment says otherwise
# (`localfleet serve` started by hand does not watch its parent).
export LOCALAI_BACKEND_PARENT_WATCH="${LOCALAI_BACKEND_PARENT_WATCH:-true}"
# Start-up models bundled beside run.sh (the llama-cpp image's models/) are where LOCALFLEET_MODEL is
# looked up, unless LOCALFLEET_MODEL_PATH names another folder.
if [[ -z "${LOCALFLEET_MODEL_PATH:-}" && -d "$here/models" ]]; then
    export LOCALFLEET_MODEL_PATH="$here/models"
fi

for venv in "${LOCALFLEET_VENV:-}" "$here" "$here/.venv" "$here/venv" "$repo/.venv"; do
    if [[ -n "$venv" && -x "$venv/bin/localfleet" ]]; then
        exec "$venv/bin/localfleet" serve "$backend" "$@"
    fi
done
if command -v localfleet >/dev/null 2>&1; then
    exec localfleet serve "$backend" "$@"
fi
echo "run.sh: no localfleet found (looked in \$LOCALFLEET_VENV, $here/bin, $here/.venv, $here/venv," \
    "$repo/.venv and PATH); install it with: localfleet install $backend" >&2
exit 127
