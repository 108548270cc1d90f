"""The stablediffusion-ggml tests' model: a full-size random SD 1.x, built once into the test cache."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def sd1() -> Path:
    from tests.stablediffusion_ggml.models import build_sd1_random

    return build_sd1_random()
