"""The mlx-vlm tests' model: a tiny random LLaVA built once per session (tests/mlx_vlm/models.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Loading must never reach for a hub: every model here is a local folder.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.mlx_vlm.models import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("tiny-llava"))
