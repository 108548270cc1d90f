"""The stablediffusion-ggml process listens before stable-diffusion.cpp is loaded: it comes with LoadModel."""

from __future__ import annotations

from tests.import_probe import imported_before_load


def test_serving_imports_no_engine_before_load() -> None:
    modules = ("stable_diffusion_cpp", "PIL", "numpy", "av")
    assert imported_before_load("stablediffusion-ggml", modules) == "none"
