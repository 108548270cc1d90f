"""The folder requests may write in (tests/piper/speech_checks.py), and the tiny random VITS models
(tests/coqui/models.py), built once into the test cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.piper.speech_checks import roots

# torch on two shared cores: more threads than cores only slows a tiny model down.
os.environ.setdefault("OMP_NUM_THREADS", "1")

__all__ = ["multi", "roots", "single", "xtts_model"]


@pytest.fixture(scope="session")
def single() -> Path:
    from tests.coqui.models import single

    return single()


@pytest.fixture(scope="session")
def multi() -> Path:
    from tests.coqui.models import multi

    return multi()


@pytest.fixture(scope="session")
def xtts_model() -> Path:
    from tests.coqui.models import xtts

    return xtts()
