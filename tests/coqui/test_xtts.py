"""coqui with a tiny random XTTS (tests/coqui/models.py) over real gRPC: voices cloned from a reference
recording, a preset voice, streaming within a sentence, and the reference recordings it refuses.

Random weights sample random audio tokens until the model's token limit or a random stop, so lengths
are not checked against the text here (the VITS tests do that); a seeded load makes them repeatable.
"""

from __future__ import annotations

import wave
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from localfleet.proto import backend_pb2 as pb
from localfleet.testing import Served
from localfleet_coqui.servicer import Coqui
from tests.coqui.models import LANGUAGES, XTTS_RATE, XTTS_SPEAKER, XTTS_TOKENS
from tests.piper.speech_checks import error_of, read_wav, serving_tts, stream, tts, write_wav

pytestmark = pytest.mark.asyncio(loop_scope="module")

#: audio tokens between two chunks of a stream: a sentence of XTTS_TOKENS tokens comes in several
CHUNK_TOKENS = 4


@pytest.fixture(scope="module")
def reference(roots: Path) -> Path:
    """Two seconds of a tone with some noise, as a 16 kHz WAV (XTTS reads it at 22,050 Hz)."""
    import numpy as np

    rng = np.random.RandomState(0)
    rate = 16000
    samples = np.sin(np.arange(rate * 2) * 0.07) * 8000 + rng.randn(rate * 2) * 300
    return write_wav(roots / "me.wav", samples.astype("<i2").tobytes(), rate)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def xtts(roots: Path, xtts_model: Path) -> AsyncIterator[Served]:
    options = ["seed:3", f"stream_chunk_size:{CHUNK_TOKENS}"]
    async with serving_tts(Coqui(), roots, [xtts_model], Model=str(xtts_model), Options=options) as (
        served,
        loaded,
    ):
        assert loaded == "tiny-xtts (xtts, 24000 Hz, 1 speaker, 2 languages, clones voices) on cpu"
        yield served


async def test_a_voice_cloned_from_a_recording_writes_a_wav_at_24_khz(
    xtts: Served, roots: Path, reference: Path
) -> None:
    result = await tts(xtts, roots / "cloned.wav", "Hello world.", voice=str(reference))
    assert "(voice cloned from me.wav)" in result.message
    wav = read_wav(roots / "cloned.wav")
    assert (wav.rate, wav.channels, wav.width) == (XTTS_RATE, 1, 2)
    assert 0 < wav.seconds <= XTTS_TOKENS * 1024 / 22050 + 0.1
    assert any(wav.pcm)


async def test_the_stream_sends_audio_before_the_sentence_is_done(xtts: Served, reference: Path) -> None:
    request = pb.TTSRequest(text="Hello world.", voice=str(reference))
    streamed = await stream(xtts, request)
    assert streamed.header == {"sample_rate": XTTS_RATE, "channels": 1, "sample_format": "s16le"}
    # One sentence, several chunks: XTTS's inference_stream decodes every CHUNK_TOKENS tokens.
    assert len(streamed.replies) >= 2
    assert [bool(r.message) for r in streamed.replies] == [True] + [False] * (len(streamed.replies) - 1)
    # Seeded: the same request, the same audio.
    again = await stream(xtts, request)
    assert again.pcm == streamed.pcm


async def test_a_preset_voice_and_the_languages(xtts: Served, roots: Path, reference: Path) -> None:
    preset = await stream(xtts, pb.TTSRequest(text="Good morning.", voice=XTTS_SPEAKER))
    default = await stream(xtts, pb.TTSRequest(text="Good morning."))  # the first preset voice
    assert default.pcm == preset.pcm
    cloned = await stream(xtts, pb.TTSRequest(text="Good morning.", voice=str(reference)))
    assert cloned.pcm != preset.pcm
    french = await stream(xtts, pb.TTSRequest(text="Bonjour.", voice=XTTS_SPEAKER, language="fr"))
    assert french.pcm
    err = await error_of(xtts, roots / "x.wav", voice="Claribel Dervla")
    assert err.status == Status.NOT_FOUND
    assert f"it has speakers {XTTS_SPEAKER}" in (err.message or "")
    err = await error_of(xtts, roots / "x.wav", language="de")
    assert err.status == Status.NOT_FOUND
    assert f"it speaks {', '.join(LANGUAGES)}" in (err.message or "")
    assert not (roots / "x.wav").exists()


async def test_a_reference_that_is_missing_or_not_audio(xtts: Served, roots: Path, tmp_path: Path) -> None:
    text = roots / "notes.wav"
    text.write_text("not audio at all")
    empty = roots / "empty.wav"
    empty.write_bytes(b"")
    short = roots / "short.wav"
    with wave.open(str(short), "wb") as wav:  # a tenth of a second: too short to clone
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(22050)
        wav.writeframes(b"\1\0" * 2205)
    outside = tmp_path / "me.wav"
    outside.write_bytes((roots / "me.wav").read_bytes())
    for voice, status, says in [
        (roots / "missing.wav", Status.NOT_FOUND, "voice"),
        (text, Status.INVALID_ARGUMENT, "is not audio that can be decoded"),
        (empty, Status.INVALID_ARGUMENT, "is an empty file"),
        (short, Status.INVALID_ARGUMENT, "cannot be cloned"),
        (outside, Status.INVALID_ARGUMENT, "outside the folders"),
    ]:
        err = await error_of(xtts, roots / "x.wav", voice=str(voice))
        assert err.status == status, (voice, err.message)
        assert says in (err.message or ""), err.message
        with pytest.raises(GRPCError) as streamed:
            await stream(xtts, pb.TTSRequest(text="Hi.", voice=str(voice)))
        assert streamed.value.status == status
    assert not (roots / "x.wav").exists()
    assert await xtts.client.healthy()


async def test_loadmodel_audio_path_is_the_default_voice(
    roots: Path, xtts_model: Path, reference: Path
) -> None:
    async with serving_tts(
        Coqui(), roots, [xtts_model], Model=str(xtts_model), AudioPath=str(reference), Options=["seed:3"]
    ) as (served, _):
        result = await tts(served, roots / "default.wav", "Hi.")
        assert "(voice cloned from me.wav)" in result.message
        # A request's own voice still wins.
        result = await tts(served, roots / "default.wav", "Hi.", voice=XTTS_SPEAKER)
        assert f"(speaker {XTTS_SPEAKER})" in result.message
