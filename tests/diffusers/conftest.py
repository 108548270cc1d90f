"""The diffusers tests' models: tiny random pipelines built once per session (tests/diffusers/models.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Loading must never reach for a hub: every model here is a local folder.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("diffusers-models")


@pytest.fixture(scope="session")
def tiny_sd(models_dir: Path) -> Path:
    from tests.diffusers.models import build_tiny_sd

    return build_tiny_sd(models_dir / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_animatediff(models_dir: Path) -> Path:
    from tests.diffusers.models import build_tiny_animatediff

    return build_tiny_animatediff(models_dir / "tiny-animatediff")


@pytest.fixture(scope="session")
def tiny_upscaler(models_dir: Path) -> Path:
    from tests.diffusers.models import build_tiny_upscaler

    return build_tiny_upscaler(models_dir / "tiny-upscaler")


@pytest.fixture(scope="session")
def tiny_lora(tiny_sd: Path, models_dir: Path) -> Path:
    from tests.diffusers.models import build_tiny_lora

    return build_tiny_lora(tiny_sd, models_dir / "tiny-lora")
