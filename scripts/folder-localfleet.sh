#!/bin/sh
# The `localfleet` command of a backend folder (DEST/bin/localfleet, put there by
# scripts/backend-folder.sh): the folder's own interpreter and libraries, found relative to this file,
# so the folder runs wherever it is unpacked, on a machine with any Python or none.
set -eu
folder="$(cd -- "$(dirname -- "$0")/.." && pwd -P)"
if [ -d "$folder/lib" ]; then
    LD_LIBRARY_PATH="$folder/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export LD_LIBRARY_PATH
fi
# The host's PYTHONPATH/PYTHONHOME and user site would mix another Python's packages in.
unset PYTHONPATH PYTHONHOME
exec "$folder/python/bin/python3" -s -m localfleet "$@"
