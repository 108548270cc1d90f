#!/usr/bin/env bash
# Build the Debian bookworm base image for localfleet backends without pulling from any registry:
# debootstrap a minimal root filesystem with Python, then `docker import` it.
#
#   scripts/build-base-image.sh [TAG]        (default: localfleet-base:bookworm)
#
# Env: DEBIAN_MIRROR (default http://deb.debian.org/debian), REBUILD=1 to replace an existing tag,
#      DEBOOTSTRAP_CACHE (folder that keeps the downloaded .debs between builds).
# Needs root, debootstrap and a running Docker engine. Cached: an existing TAG is left alone.
set -euo pipefail

tag="${1:-localfleet-base:bookworm}"
suite=bookworm
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
cache="${DEBOOTSTRAP_CACHE:-/var/cache/localfleet/debootstrap}"
# python3-venv brings ensurepip, which the image recipe uses to make its venv;
# passwd (useradd) and bash come with minbase already.
packages=python3,python3-venv,ca-certificates

if [[ "${REBUILD:-0}" != 1 ]] && docker image inspect "$tag" >/dev/null 2>&1; then
    echo "build-base-image: $tag exists, skipping (REBUILD=1 to rebuild)"
    exit 0
fi
if [[ $EUID -ne 0 ]]; then
    echo "build-base-image: debootstrap needs root" >&2
    exit 1
fi
command -v debootstrap >/dev/null || { echo "build-base-image: install debootstrap (apt-get install debootstrap)" >&2; exit 1; }

rootfs="$(mktemp -d /var/tmp/localfleet-rootfs.XXXXXX)"
# The rootfs holds device nodes and root-owned files: always remove it, even on failure.
trap 'rm -rf --one-file-system "$rootfs"' EXIT
mkdir -p "$cache"

started=$SECONDS
debootstrap --variant=minbase --components=main --include="$packages" \
    --cache-dir="$cache" "$suite" "$rootfs" "$mirror"

# Nothing in the image runs apt at build time (wheels come from a wheelhouse): drop what only apt
# and people reading docs need, to keep the image small.
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
    "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/* "$rootfs"/tmp/* "$rootfs"/root/.cache
# Leave apt pointed at the mirror for anyone extending the image.
printf 'deb %s %s main\n' "$mirror" "$suite" > "$rootfs/etc/apt/sources.list"

tar --numeric-owner --xattrs -C "$rootfs" -c . \
    | docker import \
        --change 'ENV LANG=C.UTF-8' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' \
        --message "debootstrap $suite minbase + $packages" \
        - "$tag"
echo "build-base-image: built $tag in $((SECONDS - started)) s"
