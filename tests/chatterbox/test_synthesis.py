"""chatterbox over real gRPC on the full-size random checkpoint (tests/chatterbox/models.py).

chatterbox builds its networks at fixed sizes, so the checkpoint is full size: built once into the test
cache (3.2 GB on disk, 45 s and 7 GB of RAM on two cores), loaded once per module (about 15 s, 4.3 GB),
and each sentence kept short by the options below (4 speech tokens, 2 flow steps: about 5 s). A machine
without that memory skips this module with LOCALFLEET_CHATTERBOX_SYNTHESIS=0. The weights are seeded
noise, so nothing here listens for words: the audio's format, its length against the text, determinism
under a seed, a cloned voice's difference, AudioPath, and every refusal a request can meet.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from localfleet.proto import backend_pb2 as pb
from localfleet.testing import Served
from tests.chatterbox.models import write_reference
from tests.piper.speech_checks import (
    check_dst_outside_the_roots_or_in_a_missing_folder,
    check_whitespace_is_invalid,
    error_of,
    read_wav,
    serving_tts,
    stream,
    tts,
)

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(
        os.environ.get("LOCALFLEET_CHATTERBOX_SYNTHESIS") == "0",
        reason="LOCALFLEET_CHATTERBOX_SYNTHESIS=0: no room for the 3.2 GB checkpoint (7 GB to build)",
    ),
    pytest.mark.timeout(1800),
]

RATE = 24000
OPTIONS = ["seed:7", "max_speech_tokens:4", "flow_steps:2"]
TWO = "Hello there. How are you?"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def chatterbox(roots: Path, model: Path) -> AsyncIterator[Served]:
    from localfleet_chatterbox.servicer import Chatterbox

    async with serving_tts(Chatterbox(), roots, [model], Model=str(model), Options=OPTIONS, Threads=2) as (
        served,
        loaded,
    ):
        assert loaded == f"{model.name} on cpu with its built-in voice"
        yield served


async def test_tts_and_stream_speak_the_same_seeded_audio_a_chunk_per_sentence(
    chatterbox: Served, roots: Path
) -> None:
    result = await tts(chatterbox, roots / "two.wav", TWO)
    wav = read_wav(roots / "two.wav")  # header sizes agree with the data
    assert (wav.rate, wav.channels, wav.width) == (RATE, 1, 2)
    assert any(wav.pcm)
    assert f"wrote {wav.seconds:.2f} s of 24000 Hz speech (default voice)" in result.message
    assert sorted(os.listdir(roots)) == ["two.wav"]  # no temporary file left behind
    streamed = await stream(chatterbox, pb.TTSRequest(text=TWO))
    assert streamed.header == {"sample_rate": RATE, "channels": 1, "sample_format": "s16le"}
    assert [bool(r.message) for r in streamed.replies] == [True, False]
    assert streamed.pcm == wav.pcm  # the seed makes each request's noise the same
    # Audio grows with the text: one sentence of the two is the first chunk, seeded the same.
    one = await stream(chatterbox, pb.TTSRequest(text="Hello there."))
    assert one.pcm == streamed.replies[0].audio
    assert len(one.pcm) < len(streamed.pcm)


async def test_a_reference_recording_is_cloned(chatterbox: Served, roots: Path) -> None:
    reference = write_reference(roots / "alice.wav", 3.0, 220.0)
    cloned = await stream(chatterbox, pb.TTSRequest(text="Hello there.", voice=str(reference)))
    default = await stream(chatterbox, pb.TTSRequest(text="Hello there."))
    assert cloned.header["sample_rate"] == RATE
    assert cloned.pcm
    assert cloned.pcm != default.pcm
    result = await tts(chatterbox, roots / "alice-says.wav", "Hello there.", voice=str(reference))
    assert "(voice of alice.wav)" in result.message
    assert read_wav(roots / "alice-says.wav").pcm == cloned.pcm


async def test_references_that_cannot_be_cloned_are_refused(
    chatterbox: Served, roots: Path, tmp_path: Path
) -> None:
    (roots / "notes.wav").write_text("these are not samples")
    short = write_reference(roots / "short.wav", 0.4, 200.0)
    outside = write_reference(tmp_path / "outside.wav", 2.0, 200.0)
    for voice, status, reason in [
        (str(roots / "notes.wav"), Status.INVALID_ARGUMENT, "is not audio that can be decoded"),
        (str(short), Status.INVALID_ARGUMENT, "the reference recording is 0.40 s long"),
        (str(roots / "missing.wav"), Status.NOT_FOUND, "does not exist"),
        (str(outside), Status.INVALID_ARGUMENT, "outside the folders"),
        ("alice", Status.NOT_FOUND, "unknown voice 'alice'"),
    ]:
        err = await error_of(chatterbox, roots / "x.wav", voice=voice)
        assert err.status == status, (voice, err.message)
        assert reason in (err.message or ""), err.message
        with pytest.raises(GRPCError) as streamed:
            await stream(chatterbox, pb.TTSRequest(text="Hi.", voice=voice))
        assert streamed.value.status == status
    assert not (roots / "x.wav").exists()
    assert await chatterbox.client.healthy()


async def test_language_other_than_english_or_another_model_is_refused(
    chatterbox: Served, roots: Path
) -> None:
    err = await error_of(chatterbox, roots / "x.wav", language="fr")
    assert err.status == Status.INVALID_ARGUMENT
    assert "it speaks English (en)" in (err.message or "")
    err = await error_of(chatterbox, roots / "x.wav", model="/models/chatterbox-multilingual")
    assert err.status == Status.NOT_FOUND
    assert "is not loaded here" in (err.message or "")


@pytest.mark.parametrize("text", ["", "  \n "])
async def test_text_of_only_whitespace_is_invalid(chatterbox: Served, roots: Path, text: str) -> None:
    await check_whitespace_is_invalid(chatterbox, roots / "w.wav", text)


async def test_dst_outside_the_roots_or_in_a_missing_folder(
    chatterbox: Served, roots: Path, tmp_path: Path
) -> None:
    await check_dst_outside_the_roots_or_in_a_missing_folder(chatterbox, roots, tmp_path)


async def test_audio_path_is_the_voice_of_requests_without_one(
    chatterbox: Served, roots: Path, model: Path
) -> None:
    # Last: it loads the checkpoint again, with a reference recording as its default voice.
    reference = write_reference(roots / "bob.wav", 3.0, 220.0)  # alice's recording, another name
    cloned = await stream(chatterbox, pb.TTSRequest(text="Hello there.", voice=str(reference)))
    request = pb.ModelOptions(Model=str(model), Options=OPTIONS, Threads=2, AudioPath=str(reference))
    result = await chatterbox.client.backend.LoadModel(request)
    assert result.success, result.message
    assert result.message.startswith(f"{model.name} on cpu with voice bob.wav")
    default = await stream(chatterbox, pb.TTSRequest(text="Hello there."))
    assert default.pcm == cloned.pcm
