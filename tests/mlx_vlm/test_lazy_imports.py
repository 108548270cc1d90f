"""The mlx-vlm process listens before mlx is imported: it comes with LoadModel."""

from __future__ import annotations

from tests.import_probe import imported_before_load


def test_serving_imports_no_mlx_before_load() -> None:
    modules = ("mlx", "mlx_vlm", "transformers", "numpy", "PIL")
    assert imported_before_load("mlx-vlm", modules) == "none"
