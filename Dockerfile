# One image recipe for every localfleet backend and build type; what goes in is the build matrix's
# (build-types.toml and services/<name>/pyproject.toml, read by `python -m localfleet.matrix`).
#
#   scripts/build-wheelhouse.sh local-store cpu       # wheels for the image's Python, on the host
#   docker build --build-arg BACKEND=local-store -t localfleet/local-store:dev .
#   docker build --build-arg BACKEND=local-store --target gallery -t localfleet/local-store:gallery .
#
# Targets: the default (last) stage is the runnable image (compose, Kubernetes): the backend folder at
# /opt/localfleet, a non-root user, a health check. `gallery` is the same folder alone at the root of a
# FROM scratch image, the way LocalAI's gallery installs a backend: it unpacks the image into its
# backends folder and runs run.sh from there, with the folder's own Python (core's image has none).
# Build args:
#   BASE_IMAGE  the build stage: any Debian/Ubuntu image. The default is the official slim image;
#               offline machines use scripts/build-base-image.sh (debootstrap + docker import, no
#               registry); a GPU build the vendor's image its build type names (build-types.toml). One
#               without python3 (nvidia/cuda) gets it from apt first, then the matrix's python-packages.
#   BACKEND     which backend (a folder under services/; default local-store).
#   BUILD_TYPE  cpu (default) | cublas12 | hipblas | intel | vulkan, as LocalAI names them. A backend with
#               no build of that type (build-types entry `uses-cpu`) gets its cpu build; metal has no
#               container (scripts/backend-folder.sh builds its folder on macOS) and is refused.
#   RUNTIME_IMAGE  the final stage (default BASE_IMAGE): the folder carries its interpreter and
#               libraries, so any glibc image as new as the build stage's serves (a vendor's runtime
#               image for GPU builds that compile in its devel image).
#   MODELS      1 (default) bundles the backend's start-up model where it has one that is not a Python
#               dependency (llama-cpp: Gemma 3 270M, Gemma terms); 0 leaves it out.
# Packages come from build/wheelhouse/ alone when it holds wheels (scripts/build-wheelhouse.sh), so the
# build needs no package index; without a wheelhouse uv uses the index. Build steps of a backend's own
# are in services/<name>/image.sh (llama-cpp: the bundled model).
ARG BASE_IMAGE=python:3.11-slim-bookworm
ARG RUNTIME_IMAGE=${BASE_IMAGE}

FROM ${BASE_IMAGE} AS build
ARG BACKEND=local-store
ARG BUILD_TYPE=cpu
ARG MODELS=1
# The matrix reader and this backend's pyproject first: the packages layer stays cached while the
# sources change.
COPY build-types.toml /src/
COPY shared/localfleet/__init__.py shared/localfleet/matrix.py /src/shared/localfleet/
COPY services/${BACKEND}/pyproject.toml /src/services/${BACKEND}/
COPY scripts/cell.py /src/scripts/
# python3 reads the matrix; then the cell's Debian packages: python-packages (venv, headers), the
# compiler and libraries to build with, and the runtime libraries (whose files the folder copies).
# hadolint ignore=DL3008,SC2086
RUN set -eu; \
    if ! command -v python3 >/dev/null 2>&1; then \
        apt-get update; \
        apt-get install -y --no-install-recommends python3; \
    fi; \
    python3 /src/scripts/cell.py check "$BACKEND" "$BUILD_TYPE" --container; \
    PYTHONPATH=/src/shared python3 -m localfleet.matrix sh "$BACKEND" "$BUILD_TYPE" > /src/cell.sh; \
    . /src/cell.sh; \
    packages="$(echo $python_packages $build_packages $runtime_packages)"; \
    if [ -n "$packages" ]; then \
        apt-get update; \
        apt-get install -y --no-install-recommends $packages; \
    fi; \
    rm -rf /var/lib/apt/lists/*
COPY . /src
# The one folder builder (scripts/backend-folder.sh) makes /opt/localfleet: interpreter, packages,
# libraries, run.sh. Its checks: nothing in it names /opt/localfleet, and run.sh starts with no env.
RUN MODELS="$MODELS" bash /src/scripts/backend-folder.sh "$BACKEND" "$BUILD_TYPE" /opt/localfleet

# LocalAI's gallery: `local-ai backends install` unpacks this image into <backends>/<name>/.
FROM scratch AS gallery
ARG BACKEND=local-store
ARG BUILD_TYPE=cpu
LABEL org.opencontainers.image.title="localfleet-${BACKEND}" \
      org.opencontainers.image.description="localfleet ${BACKEND} backend folder for LocalAI's gallery" \
      org.opencontainers.image.licenses="MIT" \
      io.localfleet.backend="${BACKEND}" \
      io.localfleet.build-type="${BUILD_TYPE}"
COPY --from=build /opt/localfleet /

FROM ${RUNTIME_IMAGE}
ARG BACKEND=local-store
ARG BUILD_TYPE=cpu
LABEL org.opencontainers.image.title="localfleet-${BACKEND}" \
      org.opencontainers.image.description="localfleet ${BACKEND} backend for LocalAI (gRPC)" \
      org.opencontainers.image.licenses="MIT" \
      io.localfleet.backend="${BACKEND}" \
      io.localfleet.build-type="${BUILD_TYPE}"
# The package list alone first: the apt layer stays cached while the folder changes.
COPY --from=build /opt/localfleet/RUNTIME_PACKAGES /opt/localfleet/RUNTIME_PACKAGES
# A fixed uid/gid so Kubernetes (runAsUser, fsGroup) and volume owners can name it. The runtime
# packages are what the folder cannot carry (drivers and their loaders' manifests, e.g. Vulkan ICDs),
# from the image's apt sources, unpinned like the base image.
# hadolint ignore=DL3008,SC2086
RUN set -eu; \
    packages="$(cat /opt/localfleet/RUNTIME_PACKAGES)"; \
    if [ -n "$packages" ]; then \
        apt-get update; \
        apt-get install -y --no-install-recommends $packages; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    groupadd --gid 10001 localfleet; \
    useradd --uid 10001 --gid 10001 --no-log-init --no-create-home \
        --home-dir /var/lib/localfleet --shell /usr/sbin/nologin localfleet; \
    install -d -o 10001 -g 10001 -m 0750 /var/lib/localfleet
COPY --from=build /opt/localfleet /opt/localfleet
ENV PATH=/opt/localfleet/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LOCALFLEET_STORE_DIR=/var/lib/localfleet
VOLUME ["/var/lib/localfleet"]
WORKDIR /opt/localfleet
USER 10001:10001
# 50051 is the gRPC port (LocalAI Backend service and grpc.health.v1 on the same port).
EXPOSE 50051
# grpc.health.v1 Check over loopback (no auth token needed): SERVING once the start-up model loaded.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["localfleet", "call", "127.0.0.1:50051", "ready"]
ENTRYPOINT ["/opt/localfleet/run.sh", "--addr", "0.0.0.0:50051"]
