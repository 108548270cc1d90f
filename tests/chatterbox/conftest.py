"""The folder requests may write in (tests/piper/speech_checks.py), and the full-size random Chatterbox
(tests/chatterbox/models.py) for the synthesis tests, built once into the test cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chatterbox.models import build
from tests.piper.speech_checks import roots

__all__ = ["model", "roots"]


@pytest.fixture(scope="session")
def model() -> Path:
    return build()
