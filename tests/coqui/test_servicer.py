"""coqui over real gRPC with tiny random VITS models (tests/coqui/models.py): WAVs, streams, speakers,
languages, refusals.

The weights are random, so nothing here listens for words: the tests check the audio's format and its
length against the text, that a seeded model is deterministic (same request, same samples; another
speaker, other samples), and everything the backend itself decides.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from localfleet.proto import backend_pb2 as pb
from localfleet.testing import Served, serving
from localfleet_coqui.servicer import Coqui
from tests.coqui.models import LANGUAGES, RATE, SPEAKERS
from tests.piper.speech_checks import (
    SENTENCES,
    WordlessEdges,
    error_of,
    read_wav,
    serving_tts,
    stream,
    tts,
    write_wav,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def vits(roots: Path, single: Path) -> AsyncIterator[Served]:
    async with serving_tts(Coqui(), roots, [single], Model=str(single), Options=["seed:7"]) as (
        served,
        loaded,
    ):
        assert loaded == f"{single.name} (vits, 22050 Hz) on cpu"
        yield served


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def vctk(roots: Path, multi: Path) -> AsyncIterator[Served]:
    async with serving_tts(Coqui(), roots, [multi], Model=str(multi), Options=["seed:7"]) as (served, loaded):
        assert loaded == f"{multi.name} (vits, 22050 Hz, 2 speakers, 2 languages) on cpu"
        yield served


async def test_tts_writes_a_complete_wav_at_the_models_rate(vits: Served, roots: Path) -> None:
    result = await tts(vits, roots / "hello.wav", "Hello world, this is a test.")
    assert result.success
    wav = read_wav(roots / "hello.wav")  # header sizes agree with the data
    assert (wav.rate, wav.channels, wav.width) == (RATE, 1, 2)
    assert wav.frames > 0
    assert any(wav.pcm)  # not silence
    assert f"wrote {wav.seconds:.2f} s of 22050 Hz speech (tiny-vits)" in result.message
    assert sorted(os.listdir(roots)) == ["hello.wav"]  # no temporary file left behind


async def test_audio_grows_with_the_text(vits: Served, roots: Path) -> None:
    await tts(vits, roots / "short.wav", "Hello.")
    await tts(vits, roots / "long.wav", "Hello. " + " ".join(SENTENCES))
    short, long = read_wav(roots / "short.wav"), read_wav(roots / "long.wav")
    assert short.frames > 0
    assert long.frames > 3 * short.frames


async def test_stream_sends_the_format_first_then_a_chunk_per_sentence(vits: Served, roots: Path) -> None:
    streamed = await stream(vits, pb.TTSRequest(text=" ".join(SENTENCES)))
    assert streamed.header == {"sample_rate": RATE, "channels": 1, "sample_format": "s16le"}
    assert [bool(r.message) for r in streamed.replies] == [True] + [False] * (len(SENTENCES) - 1)
    assert all(r.audio and len(r.audio) % 2 == 0 for r in streamed.replies)
    # Seeded: the same request gives the same samples, and TTS writes what TTSStream sends.
    again = await stream(vits, pb.TTSRequest(text=" ".join(SENTENCES)))
    assert again.pcm == streamed.pcm
    await tts(vits, roots / "same.wav", " ".join(SENTENCES))
    assert read_wav(roots / "same.wav").pcm == streamed.pcm
    # Sentences after the first start with Coqui's pause between sentences.
    pause = b"\0\0" * 10000
    assert not streamed.replies[0].audio.startswith(pause)
    assert all(r.audio.startswith(pause) for r in streamed.replies[1:])


async def test_a_long_sentence_is_spoken_a_bounded_piece_at_a_time(vits: Served) -> None:
    text = " ".join(["word"] * 120)  # 599 characters, no sentence end: three pieces of at most 200
    streamed = await stream(vits, pb.TTSRequest(text=text))
    assert len(streamed.replies) == 3


async def test_speakers_and_languages_of_a_multi_speaker_model(vctk: Served, roots: Path) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    alice = await stream(vctk, pb.TTSRequest(text=text, voice="alice"))
    again = await stream(vctk, pb.TTSRequest(text=text, voice="alice", language="en"))
    bob = await stream(vctk, pb.TTSRequest(text=text, voice="bob"))
    french = await stream(vctk, pb.TTSRequest(text=text, voice="alice", language="fr"))
    assert alice.pcm == again.pcm  # the first speaker and language are the defaults
    assert bob.pcm != alice.pcm
    assert french.pcm != alice.pcm
    result = await tts(vctk, roots / "bob.wav", text, voice="bob")
    assert "(speaker bob)" in result.message
    assert read_wav(roots / "bob.wav").pcm == bob.pcm


async def test_unknown_speaker_is_not_found_naming_the_speakers(
    vctk: Served, vits: Served, roots: Path
) -> None:
    err = await error_of(vctk, roots / "x.wav", voice="carol")
    assert err.status == Status.NOT_FOUND
    assert f"unknown voice 'carol'; it has speakers {', '.join(SPEAKERS)}" in (err.message or "")
    with pytest.raises(GRPCError) as streamed:
        await stream(vctk, pb.TTSRequest(text="Hi.", voice="carol"))
    assert streamed.value.status == Status.NOT_FOUND
    # A single-speaker model has no speakers to choose from.
    err = await error_of(vits, roots / "x.wav", voice="alice")
    assert err.status == Status.NOT_FOUND
    assert "it has one voice (send no voice)" in (err.message or "")
    assert not (roots / "x.wav").exists()
    assert await vctk.client.healthy()
    assert (await tts(vctk, roots / "x.wav", voice="bob")).success  # and it serves on


async def test_unknown_language_is_refused_naming_the_languages(
    vctk: Served, vits: Served, roots: Path
) -> None:
    err = await error_of(vctk, roots / "x.wav", language="de")
    assert err.status == Status.NOT_FOUND
    assert f"unknown language 'de'; it speaks {', '.join(LANGUAGES)}" in (err.message or "")
    err = await error_of(vits, roots / "x.wav", language="fr")
    assert err.status == Status.INVALID_ARGUMENT
    assert "speaks one language" in (err.message or "")
    assert await vits.client.healthy()


async def test_a_recording_as_voice_on_a_model_that_does_not_clone(vits: Served, roots: Path) -> None:
    me = write_wav(roots / "me.wav", b"\1\0" * RATE, RATE)
    for voice in (str(me), str(roots / "missing.wav")):
        err = await error_of(vits, roots / "clone.wav", voice=voice)
        assert err.status == Status.INVALID_ARGUMENT
        assert "is a recording, and tiny-vits (vits) does not clone voices" in (err.message or "")
    assert not (roots / "clone.wav").exists()
    assert await vits.client.healthy()


async def test_another_model_name_is_not_found(vits: Served, roots: Path) -> None:
    err = await error_of(vits, roots / "x.wav", model="/models/xtts-v2")
    assert err.status == Status.NOT_FOUND
    assert "tiny-vits is" in (err.message or "")
    # Core's form of the loaded model's name (its models dir joined with the name) is fine.
    assert (await tts(vits, roots / "x.wav", model="/models/tiny-vits")).success


async def test_options_and_model_names_forms(roots: Path, multi: Path) -> None:
    async with serving_tts(
        Coqui(),
        roots,
        [multi],
        Model="model.pth",
        ModelPath=str(multi),
        Options=["speaker:bob", "language:fr", "seed:7"],
    ) as (served, _):
        result = await tts(served, roots / "o.wav", "Good morning.")
        assert "(speaker bob)" in result.message
        chosen = await stream(served, pb.TTSRequest(text="Good morning."))
        named = await stream(served, pb.TTSRequest(text="Good morning.", voice="bob", language="fr"))
        assert chosen.pcm == named.pcm
    async with serving_tts(Coqui(), roots, [multi], Model=str(multi / "config.json")) as (_, loaded):
        assert loaded.startswith("tiny-vits-vctk (vits")


async def test_loadmodel_refuses_what_coqui_cannot_serve(single: Path, tmp_path: Path) -> None:
    no_checkpoint = tmp_path / "no-checkpoint"
    no_checkpoint.mkdir()
    shutil.copy(single / "config.json", no_checkpoint)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "config.json").write_text("{not json")
    (junk / "model.pth").write_bytes(b"x")
    not_tts = tmp_path / "not-tts"
    not_tts.mkdir()
    (not_tts / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (not_tts / "model.pth").write_bytes(b"x")
    broken = tmp_path / "broken"
    shutil.copytree(single, broken)
    (broken / "model.pth").write_bytes(b"not a checkpoint")
    async with serving(Coqui()) as served:
        for name, options, reason in [
            ("llama-3-8b.Q4_K_M.gguf", [], "is not a Coqui model"),
            ("en_US-joe-medium.onnx", [], "is an ONNX model"),
            ("coqui/XTTS-v2", [], "downloads nothing"),
            ("tts_models/en/ljspeech/vits", [], "downloads nothing"),
            (str(no_checkpoint), [], "has no checkpoint"),
            (str(junk), [], "cannot read"),
            (str(not_tts), [], "names no Coqui model"),
            (str(broken), [], "cannot load"),
            (str(single), ["speaker:alice"], "option speaker='alice' is not a speaker"),
            (str(single), ["language:fr"], "option language='fr' is not a language"),
            (str(single), ["temperature:0.5"], "are XTTS's"),
            (str(single), ["vocoder:/nowhere"], "neither a file nor a folder"),
            (str(single), ["max_chars:0"], "greater than or equal to 1"),
        ]:
            result = await served.client.backend.LoadModel(pb.ModelOptions(Model=name, Options=options))
            assert not result.success, name
            assert reason in result.message, result.message
        result = await served.client.backend.LoadModel(
            pb.ModelOptions(Model=str(single), AudioPath=str(single / "config.json"))
        )
        assert not result.success
        assert "does not clone" in result.message
        assert await served.client.healthy()


async def test_the_loaded_model_is_out_of_the_collectors_way_until_freed(roots: Path, single: Path) -> None:
    import gc

    # A full collection would walk torch's and coqui-tts's objects, holding the GIL, after every long
    # text (the runtime's heap trim): they are frozen while the model is loaded, and thawed by Free.
    async with serving_tts(Coqui(), roots, [single], Model=str(single)) as (served, _):
        assert gc.get_freeze_count() > 50_000
        result = await served.client.backend.Free(pb.HealthMessage())
        assert result.success, result.message
        assert gc.get_freeze_count() == 0


async def test_the_model_builder_is_deterministic(tmp_path: Path) -> None:
    from tests.coqui.models import build_vits

    first, second = build_vits(tmp_path / "a"), build_vits(tmp_path / "b")
    assert (first / "config.json").read_text() == (second / "config.json").read_text()
    assert json.loads((first / "config.json").read_text())["model"] == "vits"


class TestEdges(WordlessEdges):
    @pytest.fixture
    def speaker(self, vits: Served) -> Served:
        return vits
