# One image recipe for every localfleet backend; pick the backend with --build-arg BACKEND=<name>
# (a folder under services/ and an optional-dependency group of the same name in pyproject.toml).
#
#   scripts/build-wheelhouse.sh local-store          # wheels for the image's Python, on the host
#   docker build --build-arg BACKEND=local-store -t localfleet/local-store:dev .
#
# Build args:
#   BASE_IMAGE  any Debian-like image with python3 (>= 3.11) and its venv module. The default is the
#               official slim image; offline machines use scripts/build-base-image.sh
#               (debootstrap + docker import, no registry), GPU builds a CUDA/ROCm/oneAPI base.
#   BACKEND     which backend the image serves (default local-store).
#   BUILD_TYPE  cpu (default) | cublas12 | hipblas | intel | vulkan: the accelerator flavour, as
#               LocalAI names it. cublas12 adds the `nvidia` group (GPU memory in Status); backends
#               with native engines read it to choose their wheels. local-store is the same on all.
#               faster-whisper: CTranslate2's PyPI wheels carry the CUDA kernels but load cuBLAS 12 and
#               cuDNN 9 at run time, so a cublas12 build needs a BASE_IMAGE with the CUDA 12 runtime
#               and cuDNN 9.
#               whisper: pywhispercpp's wheel is a CPU build (a GPU whisper.cpp builds from source).
#               llama-cpp compiles llama.cpp for it (services/llama-cpp/image.sh).
#   RUNTIME_IMAGE  the final stage (default BASE_IMAGE); for GPU builds that compile (llama-cpp) the
#               vendor's runtime image, with its devel image as BASE_IMAGE. It must have the same
#               python3 as BASE_IMAGE at the same path: the venv is copied over and links to it.
#   MODELS      1 (default) bundles the backend's start-up model where it has one that is not a
#               Python dependency (llama-cpp: Gemma 3 270M, Gemma terms); 0 leaves it out.
# A backend with build steps of its own has services/<name>/image.sh, sourced in the build stage:
# `build_packages` (Debian packages to build with, installed in a layer of their own), `image_prepare`
# (before pip: CMAKE_ARGS, extras, pip_args), `image_finish` (after pip) and `runtime_packages` (Debian
# packages the final stage installs).
# Packages come from build/wheelhouse/ with --no-index when it holds wheels (scripts/
# build-wheelhouse.sh), so the build needs no package index; without a wheelhouse pip uses the index.
ARG BASE_IMAGE=python:3.11-slim-bookworm
ARG RUNTIME_IMAGE=${BASE_IMAGE}

FROM ${BASE_IMAGE} AS build
ARG BACKEND=local-store
ARG BUILD_TYPE=cpu
ARG MODELS=1
# The backend's folder first: its build packages stay cached while the rest of the source changes.
COPY services/${BACKEND} /src/services/${BACKEND}
# hadolint ignore=DL3008,SC1090,SC2086
RUN set -eu; \
    hook="/src/services/$BACKEND/image.sh"; build_packages=""; \
    if [ -f "$hook" ]; then . "$hook"; fi; \
    if [ -n "$build_packages" ]; then \
        apt-get update; \
        apt-get install -y --no-install-recommends $build_packages; \
        rm -rf /var/lib/apt/lists/*; \
    fi
COPY . /src
# The venv lives beside run.sh under /opt/localfleet: the same layout run.sh looks for in a
# LocalAI backend folder, so the image starts exactly the way LocalAI starts the backend.
# hadolint ignore=SC1090,SC2086
RUN set -eu; \
    case "$BUILD_TYPE" in \
        cpu|hipblas|intel|vulkan) extras="$BACKEND" ;; \
        cublas12) extras="$BACKEND,nvidia" ;; \
        *) echo "BUILD_TYPE=$BUILD_TYPE: expected cpu, cublas12, hipblas, intel or vulkan" >&2; exit 1 ;; \
    esac; \
    test -x "/src/services/$BACKEND/run.sh" || { echo "no services/$BACKEND/run.sh" >&2; exit 1; }; \
    hook="/src/services/$BACKEND/image.sh"; pip_args=""; runtime_packages=""; \
    if [ -f "$hook" ]; then . "$hook"; image_prepare; fi; \
    index=""; \
    if ls /src/build/wheelhouse/*.whl >/dev/null 2>&1; then index="--no-index"; fi; \
    python3 -m venv /opt/localfleet/.venv; \
    /opt/localfleet/.venv/bin/pip install --no-cache-dir --disable-pip-version-check $index $pip_args \
        --find-links /src/build/wheelhouse "/src[$extras]"; \
    if [ -f "$hook" ]; then image_finish; fi; \
    cp "/src/services/$BACKEND/run.sh" /opt/localfleet/run.sh; \
    printf '%s\n' "$BACKEND" > /opt/localfleet/BACKEND; \
    printf '%s\n' "$BUILD_TYPE" > /opt/localfleet/BUILD_TYPE; \
    printf '%s\n' "$runtime_packages" > /opt/localfleet/RUNTIME_PACKAGES

FROM ${RUNTIME_IMAGE}
ARG BACKEND=local-store
ARG BUILD_TYPE=cpu
LABEL org.opencontainers.image.title="localfleet-${BACKEND}" \
      org.opencontainers.image.description="localfleet ${BACKEND} backend for LocalAI (gRPC)" \
      org.opencontainers.image.licenses="MIT" \
      io.localfleet.backend="${BACKEND}" \
      io.localfleet.build-type="${BUILD_TYPE}"
# The package list alone first: the apt layer stays cached while the venv changes.
COPY --from=build /opt/localfleet/RUNTIME_PACKAGES /opt/localfleet/RUNTIME_PACKAGES
# A fixed uid/gid so Kubernetes (runAsUser, fsGroup) and volume owners can name it. The packages are
# the backend's own (image.sh), from the image's apt sources, unpinned like the base image.
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
ENV PATH=/opt/localfleet/.venv/bin:$PATH \
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
