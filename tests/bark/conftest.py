"""The folder requests may write in (tests/piper/speech_checks.py), and the tiny random Bark
(tests/bark/models.py), built once into the test cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.piper.speech_checks import roots

__all__ = ["model", "roots"]

# Loading must never reach for a hub: the model is a local folder.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def model() -> Path:
    from tests.bark.models import cached

    return cached()
