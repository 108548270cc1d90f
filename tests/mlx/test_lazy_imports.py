"""The mlx process listens before mlx is imported: it comes with LoadModel."""

from __future__ import annotations

from tests.import_probe import imported_before_load


def test_serving_imports_no_mlx_before_load() -> None:
    assert imported_before_load("mlx", ("mlx", "mlx_lm", "transformers", "numpy")) == "none"
