"""bark over real gRPC with a tiny random Bark (tests/bark/models.py): WAVs, streams, voices, sounds.

The weights are seeded noise, so nothing here listens for words: the tests check the audio's format,
its length against the text (a generation a sentence) and the duration asked, that a seeded request
gives the same samples (and another voice, temperature or seed other samples), and everything the
backend itself decides.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from localfleet.proto import backend_pb2 as pb
from localfleet.testing import Served, serving
from localfleet_bark.servicer import Bark
from tests.bark.models import PRESETS, RATE, SEMANTIC_TOKENS
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

#: samples of one full generation: the coarse stage's 75 frames a second, 320 samples each
GENERATION = int(SEMANTIC_TOKENS * 75 / 49.9) * 320


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def bark(roots: Path, model: Path) -> AsyncIterator[Served]:
    async with serving_tts(Bark(), roots, [model.parent], Model=str(model), Seed=7) as (served, loaded):
        assert loaded == (
            f"Bark {model.name} on cpu, 4 voice presets (default v2/en_speaker_0), sounds of up to 0.6 s"
        )
        yield served


async def sound(served: Served, dst: Path, **fields: Any) -> pb.Result:
    request = pb.SoundGenerationRequest(dst=str(dst), **{"text": "[music] rain", **fields})
    result: pb.Result = await served.client.backend.SoundGeneration(request)
    return result


async def sound_error(served: Served, dst: Path, **fields: Any) -> GRPCError:
    with pytest.raises(GRPCError) as err:
        await sound(served, dst, **fields)
    return err.value


# -- TTS and TTSStream -------------------------------------------------------------------------------
async def test_tts_writes_a_complete_wav_at_the_models_rate(bark: Served, roots: Path) -> None:
    result = await tts(bark, roots / "hello.wav", "Hello world.")
    wav = read_wav(roots / "hello.wav")  # header sizes agree with the data
    assert (wav.rate, wav.channels, wav.width) == (RATE, 1, 2)
    assert wav.frames == GENERATION
    assert any(wav.pcm)  # not silence
    assert result.message == (
        f"wrote {wav.seconds:.2f} s of 24000 Hz speech (voice v2/en_speaker_0) to {roots / 'hello.wav'}"
    )
    assert sorted(os.listdir(roots)) == ["hello.wav"]  # no temporary file left behind


async def test_audio_grows_with_the_text_a_generation_a_sentence(bark: Served, roots: Path) -> None:
    await tts(bark, roots / "short.wav", "Hello.")
    await tts(bark, roots / "long.wav", " ".join(SENTENCES))
    short, long = read_wav(roots / "short.wav"), read_wav(roots / "long.wav")
    assert short.frames == GENERATION
    assert long.frames == len(SENTENCES) * GENERATION


async def test_a_seeded_request_gives_the_same_audio_and_each_voice_its_own(
    bark: Served, roots: Path
) -> None:
    text = "The quick brown fox."
    first = await stream(bark, pb.TTSRequest(text=text, voice="v2/en_speaker_1"))
    again = await stream(bark, pb.TTSRequest(text=text, voice="v2/en_speaker_1"))
    other = await stream(bark, pb.TTSRequest(text=text, voice="announcer"))
    assert first.pcm == again.pcm
    assert len(other.pcm) == len(first.pcm)
    assert other.pcm != first.pcm
    # TTS writes what TTSStream sends.
    await tts(bark, roots / "same.wav", text, voice="v2/en_speaker_1")
    assert read_wav(roots / "same.wav").pcm == first.pcm


async def test_another_seed_gives_other_audio(roots: Path, model: Path) -> None:
    text = "The quick brown fox."
    heard = []
    for seed in (7, 8):
        async with serving_tts(Bark(), roots, [model], Model=str(model), Seed=seed) as (served, _):
            heard.append((await stream(served, pb.TTSRequest(text=text))).pcm)
    async with serving_tts(Bark(), roots, [model], Model=str(model), Seed=7, Options=["seed:8"]) as (
        served,
        _,
    ):
        heard.append((await stream(served, pb.TTSRequest(text=text))).pcm)
    assert heard[0] != heard[1]
    assert heard[2] == heard[1]  # the option seed wins over ModelOptions.Seed


async def test_stream_sends_the_format_first_then_a_chunk_per_sentence(bark: Served) -> None:
    streamed = await stream(bark, pb.TTSRequest(text=" ".join(SENTENCES)))
    assert streamed.header == {"sample_rate": RATE, "channels": 1, "sample_format": "s16le"}
    assert [bool(r.message) for r in streamed.replies] == [True] + [False] * (len(SENTENCES) - 1)
    assert [len(r.audio) for r in streamed.replies] == [2 * GENERATION] * len(SENTENCES)


async def test_unknown_voice_is_not_found_naming_it_and_the_presets(
    bark: Served, roots: Path, model: Path
) -> None:
    err = await error_of(bark, roots / "x.wav", voice="v2/en_speaker_9")
    assert err.status == Status.NOT_FOUND
    message = err.message or ""
    # The closest presets first.
    assert message.startswith(f"unknown voice 'v2/en_speaker_9'; {model.name} has v2/en_speaker_")
    assert all(preset in message for preset in PRESETS)
    with pytest.raises(GRPCError) as streamed:
        await stream(bark, pb.TTSRequest(text="Hi.", voice="af_sarah"))
    assert streamed.value.status == Status.NOT_FOUND
    assert "announcer" in (streamed.value.message or "")
    assert not (roots / "x.wav").exists()
    assert (await tts(bark, roots / "x.wav", voice="announcer")).success  # and it serves on


async def test_language_picks_its_preset_and_one_bark_lacks_is_invalid(bark: Served, roots: Path) -> None:
    result = await tts(bark, roots / "de.wav", "Guten Tag.", language="de-DE")
    assert "(voice v2/de_speaker_0)" in result.message
    result = await tts(bark, roots / "fr.wav", "Bonjour.", language="fr")  # no French preset: the default
    assert "(voice v2/en_speaker_0)" in result.message
    result = await tts(bark, roots / "v.wav", "Hallo.", language="de", voice="announcer")
    assert "(voice announcer)" in result.message
    err = await error_of(bark, roots / "x.wav", language="tlh")
    assert err.status == Status.INVALID_ARGUMENT
    assert "language 'tlh' is not one Bark speaks; it speaks en, de," in (err.message or "")


async def test_another_model_is_not_found(bark: Served, roots: Path, model: Path) -> None:
    err = await error_of(bark, roots / "x.wav", model="/models/bark-small")
    assert err.status == Status.NOT_FOUND
    assert f"({model.name} is)" in (err.message or "")
    # Core's form of the loaded model's name (its models dir joined with the name) is fine.
    assert (await tts(bark, roots / "x.wav", model=f"/models/{model.name}")).success


# -- SoundGeneration ---------------------------------------------------------------------------------
async def test_sound_is_as_long_as_the_duration_asked(bark: Served, roots: Path, model: Path) -> None:
    result = await sound(bark, roots / "half.wav", duration=0.5)
    wav = read_wav(roots / "half.wav")
    assert (wav.rate, wav.channels, wav.width, wav.frames) == (RATE, 1, 2, RATE // 2)
    assert any(wav.pcm)
    assert result.message.startswith(f"wrote 0.50 s of 24000 Hz audio (Bark {model.name}) to ")
    await sound(bark, roots / "quarter.wav", duration=0.25)
    assert read_wav(roots / "quarter.wav").frames == RATE // 4
    # Unset: the option default_seconds (10 s), within the one generation this model makes.
    await sound(bark, roots / "unset.wav")
    assert read_wav(roots / "unset.wav").frames == GENERATION


async def test_temperature_and_sample_reach_the_generation(bark: Served, roots: Path) -> None:
    async def samples(name: str, **fields: Any) -> bytes:
        await sound(bark, roots / name, duration=0.5, **fields)
        return read_wav(roots / name).pcm

    plain = await samples("plain.wav")
    assert await samples("again.wav") == plain  # seeded
    hot = await samples("hot.wav", temperature=3.0)
    assert hot != plain
    assert await samples("hot2.wav", temperature=3.0) == hot
    greedy = await samples("greedy.wav", sample=False)
    assert greedy not in (plain, hot)
    assert (
        await samples("greedy2.wav", sample=False, temperature=3.0) == greedy
    )  # no sampling, no temperature


async def test_a_duration_over_one_generation_is_refused_by_name(bark: Served, roots: Path) -> None:
    err = await sound_error(bark, roots / "toolong.wav", duration=1.0)
    assert err.status == Status.INVALID_ARGUMENT
    assert (err.message or "").startswith(
        "duration 1 s is over the 0.64 s that Bark makes in one generation "
        f"({SEMANTIC_TOKENS} semantic tokens)"
    )
    err = await sound_error(bark, roots / "toolong.wav", duration=300)  # the option max_seconds comes first
    assert "over this model's limit of 120 s" in (err.message or "")
    assert not (roots / "toolong.wav").exists()


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"text": " \n"}, "text is empty or only whitespace"),
        ({"lyrics": "la la"}, "lyrics is set, but this model does not use it"),
        ({"src": "in.wav"}, "src is set, but Bark cannot continue audio"),
        ({"temperature": 0}, "temperature is 0"),
        ({"text": "music " * 300}, "the prompt is 300 tokens; Bark reads at most 256"),
    ],
)
async def test_a_sound_bark_cannot_make_is_invalid(
    bark: Served, roots: Path, fields: dict[str, Any], expected: str
) -> None:
    write_wav(roots / "in.wav", b"\0\0" * 2400, RATE)
    if fields.get("src"):
        fields["src"] = str(roots / "in.wav")
    err = await sound_error(bark, roots / "no.wav", **fields)
    assert err.status == Status.INVALID_ARGUMENT
    assert expected in (err.message or "")
    assert not (roots / "no.wav").exists()
    assert await bark.client.healthy()


# -- cancelling --------------------------------------------------------------------------------------
async def test_a_cancelled_request_stops_inside_its_generation_and_leaves_no_file(
    model: Path, tmp_path: Path
) -> None:
    # The same model making 8 s a generation: long enough to cancel inside one.
    longer = tmp_path / "tiny-bark-long"
    shutil.copytree(model, longer)
    config = json.loads((longer / "generation_config.json").read_text())
    config["semantic_config"]["max_new_tokens"] = 400
    (longer / "generation_config.json").write_text(json.dumps(config))
    roots = tmp_path / "out"
    roots.mkdir()
    async with serving_tts(Bark(), roots, [tmp_path], Model=str(longer)) as (served, _):
        started = time.perf_counter()
        assert (await sound(served, roots / "whole.wav", duration=8)).success
        whole = time.perf_counter() - started
        stub = served.client.backend
        requests = [
            (
                stub.SoundGeneration,
                pb.SoundGenerationRequest(text="rain", dst=str(roots / "cut.wav"), duration=8),
            ),
            (stub.TTS, pb.TTSRequest(text="Hello.", dst=str(roots / "cut.wav"))),
        ]
        for rpc, request in requests:
            # The deadline passes while the generation is under way.
            with pytest.raises((GRPCError, asyncio.TimeoutError)):
                await rpc(request, timeout=whole / 8)  # type: ignore[operator]
            started = time.perf_counter()
            assert (await sound(served, roots / "next.wav", duration=0.1)).success  # waits for the stop
            assert time.perf_counter() - started < whole / 2
            assert sorted(os.listdir(roots)) == ["next.wav", "whole.wav"]
            (roots / "next.wav").unlink()


async def test_a_stream_whose_caller_leaves_stops(bark: Served, roots: Path) -> None:
    async with bark.client.backend.TTSStream.open() as call:
        await call.send_message(pb.TTSRequest(text=" ".join(SENTENCES * 4)), end=True)
        first = await call.recv_message()
        assert first is not None
        assert first.message
        await call.cancel()
    assert (await tts(bark, roots / "after.wav", "Hello.")).success


# -- LoadModel -------------------------------------------------------------------------------------
async def test_loadmodel_refuses_what_bark_cannot_serve(model: Path, tmp_path: Path) -> None:
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama"}))
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "config.json").write_text("{not json")
    single = tmp_path / "voice.onnx"
    single.write_bytes(b"x")
    async with serving(Bark()) as served:
        for name, fields, reason in [
            (str(llama), {}, "is a llama model, not Bark"),
            (str(junk), {}, "config.json cannot be read"),
            (str(single), {}, "is a single file"),
            (str(tmp_path / "missing"), {}, "does not exist"),
            ("suno/bark-small", {}, "HF_HUB_OFFLINE is set"),
            (str(model), {"Options": ["voice:v2/en_speaker_6"]}, "option voice='v2/en_speaker_6' is not"),
            (str(model), {"Options": ["temperature:0"]}, "greater than 0"),
            (str(model), {"DType": "int4"}, "DType 'int4' is not one Bark runs in"),
        ]:
            request = pb.ModelOptions(Model=name, **fields)  # type: ignore[arg-type]
            result = await served.client.backend.LoadModel(request)
            assert not result.success, name
            assert reason in result.message, result.message
        assert await served.client.healthy()


async def test_a_model_without_presets_speaks_without_one(model: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(model, bare)
    (bare / "speaker_embeddings_path.json").unlink()
    roots = tmp_path / "out"
    roots.mkdir()
    async with serving_tts(Bark(), roots, [tmp_path], Model=str(bare)) as (served, loaded):
        assert "no voice presets" in loaded
        result = await tts(served, roots / "a.wav", "Hello.")
        assert "(no voice preset)" in result.message
        err = await error_of(served, roots / "b.wav", voice="announcer")
        assert err.status == Status.NOT_FOUND
        assert "bare has no voice presets" in (err.message or "")


class TestEdges(WordlessEdges):
    @pytest.fixture
    def speaker(self, bark: Served) -> Served:
        return bark
