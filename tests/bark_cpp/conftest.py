"""The folder requests may write in (tests/piper/speech_checks.py), and a bark.cpp model file of random
weights (tests/bark_cpp/models.py), module-scoped like the tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bark_cpp.models import build
from tests.piper.speech_checks import roots

__all__ = ["model", "roots"]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("models") / "bark-tiny.bin")
