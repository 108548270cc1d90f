"""The vllm tests' model: a tiny random Llama built once per session (no download)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Loading must never reach for a hub: every model here is a local folder.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.vllm.models import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
