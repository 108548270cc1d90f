"""The diffusers process listens before torch is imported: it comes with LoadModel."""

from __future__ import annotations

from tests.import_probe import imported_before_load


def test_serving_imports_no_torch_before_load() -> None:
    assert imported_before_load("diffusers", ("torch", "diffusers", "transformers", "PIL", "av")) == "none"
