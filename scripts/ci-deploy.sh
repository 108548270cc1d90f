#!/usr/bin/env bash
# Prepare a machine for the Docker deploy test (`nox -s deploy` runs this, then `pytest -m docker`):
# install Debian's docker.io and debootstrap when missing, and start dockerd when no engine answers.
# Works as root on a fresh Debian 12 with apt reachable; on a prepared machine it changes nothing.
# The images are built by the test itself (cached: the base image, the wheelhouse, docker's layers).
set -euo pipefail

log="${DOCKERD_LOG:-/var/log/localfleet-dockerd.log}"

need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
if [[ ${#need[@]} -gt 0 ]]; then
    if [[ $EUID -ne 0 ]]; then
        echo "ci-deploy: need root to install ${need[*]}" >&2
        exit 1
    fi
    echo "ci-deploy: installing ${need[*]}"
    apt-get update -q
    # Debian's docker.io starts no service here (no systemd in CI): dockerd is started below.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" ca-certificates
fi

# The Debian package's own client; any docker CLI on PATH talks to the same socket.
docker_cli="$(command -v docker || echo /usr/bin/docker)"
if "$docker_cli" info >/dev/null 2>&1; then
    echo "ci-deploy: a Docker engine is already running"
    exit 0
fi
if [[ $EUID -ne 0 ]]; then
    echo "ci-deploy: no Docker engine answers, and starting dockerd needs root" >&2
    exit 1
fi

echo "ci-deploy: starting dockerd (log: $log)"
# Detached into its own session so it outlives this script and the nox session's process group.
setsid dockerd >"$log" 2>&1 < /dev/null &
dockerd_pid=$!
deadline=$((SECONDS + 60))
until "$docker_cli" info >/dev/null 2>&1; do
    if ! kill -0 "$dockerd_pid" 2>/dev/null || ((SECONDS > deadline)); then
        echo "ci-deploy: dockerd did not come up; last lines of $log:" >&2
        tail -n 40 "$log" >&2
        exit 1
    fi
    # A short pause between polls of a bounded wait.
    sleep 0.5
done
echo "ci-deploy: dockerd $("$docker_cli" info --format '{{.ServerVersion}}') ready (pid $dockerd_pid)"
