"""kitten-tts over real gRPC with a KittenTTS-shaped model (tests/kitten_tts/models.py): WAVs, streams,
voices, refusals.

The model's weights are seeded noise, so nothing here listens for words: the tests check the audio's
format and length against the text, that the engine is deterministic (same request, same samples;
another voice, other samples), and everything the backend itself decides.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from localfleet.proto import backend_pb2 as pb
from localfleet.testing import Served, serving
from localfleet_kitten_tts.servicer import KittenTts
from tests.kitten_tts.models import ALIASES, VOICES, build
from tests.piper.speech_checks import (
    SENTENCES,
    WordlessEdges,
    error_of,
    read_wav,
    serving_tts,
    stream,
    tts,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

RATE = 24000


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def kitten(roots: Path, model: Path) -> AsyncIterator[Served]:
    async with serving_tts(KittenTts(), roots, [model.parent], Model=str(model)) as (served, loaded):
        assert loaded == f"{model.name} with 16 voices (default expr-voice-5-m)"
        yield served


async def test_tts_writes_a_complete_wav(kitten: Served, roots: Path) -> None:
    result = await tts(kitten, roots / "hello.wav", "Hello world, this is a test.")
    assert result.success
    wav = read_wav(roots / "hello.wav")  # header sizes agree with the data
    assert (wav.rate, wav.channels, wav.width) == (RATE, 1, 2)
    assert wav.frames > 0
    assert any(wav.pcm[i] for i in range(len(wav.pcm)))  # not silence
    assert f"wrote {wav.seconds:.2f} s of 24000 Hz speech (voice expr-voice-5-m)" in result.message
    assert sorted(os.listdir(roots)) == ["hello.wav"]  # no temporary file left behind


async def test_audio_grows_with_the_text(kitten: Served, roots: Path) -> None:
    await tts(kitten, roots / "short.wav", "Hello.")
    await tts(kitten, roots / "long.wav", "Hello. " + " ".join(SENTENCES))
    short, long = read_wav(roots / "short.wav"), read_wav(roots / "long.wav")
    assert short.frames > 0
    assert long.frames > 3 * short.frames


async def test_same_request_same_audio_and_each_voice_its_own(kitten: Served, roots: Path) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    first = await stream(kitten, pb.TTSRequest(text=text, voice="expr-voice-2-f"))
    again = await stream(kitten, pb.TTSRequest(text=text, voice="expr-voice-2-f"))
    other = await stream(kitten, pb.TTSRequest(text=text, voice="expr-voice-4-m"))
    assert first.pcm == again.pcm
    assert len(other.pcm) == len(first.pcm)
    assert other.pcm != first.pcm
    # An alias of the config is that voice.
    assert ALIASES["Bella"] == "expr-voice-2-f"
    alias = await stream(kitten, pb.TTSRequest(text=text, voice="Bella"))
    assert alias.pcm == first.pcm
    # TTS writes what TTSStream sends.
    await tts(kitten, roots / "same.wav", text, voice="Bella")
    assert read_wav(roots / "same.wav").pcm == first.pcm


async def test_stream_sends_the_format_then_a_chunk_per_sentence(kitten: Served) -> None:
    streamed = await stream(kitten, pb.TTSRequest(text=" ".join(SENTENCES)))
    assert streamed.header == {"sample_rate": RATE, "channels": 1, "sample_format": "s16le"}
    assert [bool(r.message) for r in streamed.replies] == [True] + [False] * (len(SENTENCES) - 1)
    assert all(r.audio and len(r.audio) % 2 == 0 for r in streamed.replies)
    # Each chunk is its own sentence's audio: spoken alone, it is the same samples.
    alone = await stream(kitten, pb.TTSRequest(text=SENTENCES[1]))
    assert streamed.replies[1].audio == alone.pcm


async def test_a_long_sentence_is_spoken_a_bounded_piece_at_a_time(kitten: Served) -> None:
    text = " ".join(["word"] * 120)  # 599 characters, no sentence end: three pieces of at most 200
    streamed = await stream(kitten, pb.TTSRequest(text=text))
    assert len(streamed.replies) == 3


async def test_unknown_voice_is_not_found_naming_the_voices(kitten: Served, roots: Path) -> None:
    err = await error_of(kitten, roots / "x.wav", voice="af_sarah")
    assert err.status == Status.NOT_FOUND
    message = err.message or ""
    assert "unknown voice 'af_sarah'" in message
    assert ", ".join([*ALIASES, *VOICES]) in message
    with pytest.raises(GRPCError) as streamed:
        await stream(kitten, pb.TTSRequest(text="Hi.", voice="af_sarah"))
    assert streamed.value.status == Status.NOT_FOUND
    assert "expr-voice-5-f" in (streamed.value.message or "")
    assert await kitten.client.healthy()
    assert (await tts(kitten, roots / "x.wav", voice="Leo")).success  # and it serves on


async def test_language_other_than_english_or_another_model_is_refused(kitten: Served, roots: Path) -> None:
    err = await error_of(kitten, roots / "x.wav", language="fr-fr")
    assert err.status == Status.INVALID_ARGUMENT
    assert "speaks en-us" in (err.message or "")
    assert (await tts(kitten, roots / "x.wav", language="en_US")).success
    err = await error_of(kitten, roots / "x.wav", model="/models/kitten-tts-nano-0.8")
    assert err.status == Status.NOT_FOUND
    assert "kitten-tts-fake is" in (err.message or "")
    # Core's form of the loaded model's name (its models dir joined with the name) is fine.
    assert (await tts(kitten, roots / "x.wav", model="/models/kitten-tts-fake")).success


async def test_options_choose_voice_and_model_file_names_its_folder(
    roots: Path, model: Path, tmp_path: Path
) -> None:
    async with serving_tts(
        KittenTts(),
        roots,
        [model],
        Model="kitten_tts_fake.onnx",
        ModelPath=str(model),
        Options=["voice:Kiki"],
    ) as (served, loaded):
        assert "(default Kiki)" in loaded
        result = await tts(served, roots / "k.wav")
        assert "(voice Kiki)" in result.message
    # A voices file with some of the voices: those are the ones it has.
    few = build(tmp_path / "few", voices=["expr-voice-3-f", "expr-voice-2-m"])
    async with serving_tts(KittenTts(), roots, [few], Model=str(few / "config.json")) as (served, loaded):
        assert loaded == "few with 4 voices (default expr-voice-2-m)"
        err = await error_of(served, roots / "x.wav", voice="expr-voice-5-m")
        assert "few has Jasper, Luna, expr-voice-2-m, expr-voice-3-f" in (err.message or "")


async def test_loadmodel_refuses_what_kitten_cannot_serve(model: Path, tmp_path: Path) -> None:
    piper_voice = tmp_path / "en_US-joe-medium.onnx"
    piper_voice.write_bytes(b"x")
    (tmp_path / "en_US-joe-medium.onnx.json").write_text("{}")
    kitten2 = build(tmp_path / "kitten-tts-2", kind="KITTEN2")
    broken = build(tmp_path / "broken")
    (broken / "voices.npz").unlink()
    junk = build(tmp_path / "junk")
    (junk / "config.json").write_text("{not json")
    none = build(tmp_path / "none", voices=[])
    async with serving(KittenTts()) as served:
        for name, options, reason in [
            ("llama-3-8b.Q4_K_M.gguf", [], "no KittenTTS model at"),
            ("KittenML/kitten-tts-nano-0.8", [], "downloads nothing"),
            (str(piper_voice), [], "use the piper backend"),
            (str(kitten2), [], "not KittenTTS 2"),
            (str(broken), [], "voices 'voices.npz' is not a file"),
            (str(junk), [], "cannot read"),
            (str(none), [], "holds none of KittenTTS's voices"),
            (str(model), ["voice:af_sarah"], "option voice='af_sarah'"),
            (str(model), ["speed:3"], "less than or equal to 2"),
            (str(model), ["max_chars:0"], "greater than or equal to 1"),
        ]:
            result = await served.client.backend.LoadModel(pb.ModelOptions(Model=name, Options=options))
            assert not result.success, name
            assert reason in result.message, result.message
        assert await served.client.healthy()


async def test_the_model_builder_is_deterministic(tmp_path: Path) -> None:
    first, second = build(tmp_path / "a"), build(tmp_path / "b")
    for name in ("kitten_tts_fake.onnx", "voices.npz", "config.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    assert json.loads((first / "config.json").read_text())["type"] == "ONNX1"


class TestEdges(WordlessEdges):
    @pytest.fixture
    def speaker(self, kitten: Served) -> Served:
        return kitten
