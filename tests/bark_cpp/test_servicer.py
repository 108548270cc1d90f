"""bark-cpp over real gRPC with a bark.cpp model of random weights (tests/bark_cpp/models.py): WAVs,
streams, seeds, options, refusals.

The weights are noise, so nothing here listens for words: the tests check the audio's format, its
length against the text and the options, the sampler's seed, and everything the backend itself decides.
"""

from __future__ import annotations

import asyncio
import os
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from localfleet.proto import backend_pb2 as pb
from localfleet.testing import Served, serving
from localfleet_bark_cpp.servicer import BarkCpp
from tests.bark_cpp.models import build
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
#: semantic tokens a sentence in most tests: short audio, quick runs
TOKENS = 16
#: ggml's workers spin while they wait for each other: on cores that other processes keep busy, two
#: threads run a sentence ten times slower than one (CI runs beside other work)
THREADS = "threads:1"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def bark(roots: Path, model: Path) -> AsyncIterator[Served]:
    options = [f"semantic_tokens:{TOKENS}", THREADS]
    async with serving_tts(BarkCpp(), roots, [model.parent], Model=str(model), Options=options) as (
        served,
        loaded,
    ):
        assert loaded == (
            "Bark bark-tiny.bin on bark.cpp (f16), 24000 Hz, up to 16 semantic tokens a sentence, 1 thread"
        )
        yield served


async def test_tts_writes_a_complete_wav(bark: Served, roots: Path) -> None:
    result = await tts(bark, roots / "hello.wav", "Hello world, the world.")
    assert result.success
    wav = read_wav(roots / "hello.wav")  # header sizes agree with the data
    assert (wav.rate, wav.channels, wav.width) == (RATE, 1, 2)
    assert wav.frames > 0
    assert any(wav.pcm)  # not silence
    assert f"wrote {wav.seconds:.2f} s of 24000 Hz speech (bark.cpp)" in result.message
    assert sorted(os.listdir(roots)) == ["hello.wav"]  # no temporary file left behind


async def test_audio_grows_with_the_text_a_generation_a_sentence(bark: Served, roots: Path) -> None:
    await tts(bark, roots / "short.wav", SENTENCES[0])
    await tts(bark, roots / "long.wav", " ".join(SENTENCES))
    short, long = read_wav(roots / "short.wav"), read_wav(roots / "long.wav")
    assert short.frames > 0
    assert long.frames > 2.5 * short.frames


async def test_stream_sends_the_format_then_a_chunk_per_sentence(bark: Served) -> None:
    streamed = await stream(bark, pb.TTSRequest(text=" ".join(SENTENCES)))
    assert streamed.header == {"sample_rate": RATE, "channels": 1, "sample_format": "s16le"}
    assert [bool(r.message) for r in streamed.replies] == [True] + [False] * (len(SENTENCES) - 1)
    assert all(r.audio and len(r.audio) % 2 == 0 for r in streamed.replies)


async def test_a_long_sentence_is_spoken_a_bounded_piece_at_a_time(bark: Served) -> None:
    text = " ".join(["word"] * 120)  # 599 characters, no sentence end: three pieces of at most 200
    streamed = await stream(bark, pb.TTSRequest(text=text))
    assert len(streamed.replies) == 3


async def test_the_seed_decides_the_audio(roots: Path, model: Path) -> None:
    async def speak(*options: str, seed: int = 0, twice: bool = False) -> list[bytes]:
        async with serving_tts(
            BarkCpp(), roots, [model.parent], Model=str(model), Seed=seed, Options=[*options, THREADS]
        ) as (served, _):
            text = "hello world."
            return [(await stream(served, pb.TTSRequest(text=text))).pcm for _ in range(2 if twice else 1)]

    tokens = f"semantic_tokens:{TOKENS}"
    first, again, other = (
        await speak(tokens, seed=7),
        await speak(tokens, seed=7),
        await speak(tokens, seed=8),
    )
    assert first == again
    assert len(other[0]) == len(first[0])
    assert other != first
    assert await speak(tokens, "seed:7", seed=8) == first  # the option overrides ModelOptions.Seed
    # Sampling goes on from one request to the next; argmax at every stage does not sample.
    sampled = await speak(tokens, seed=7, twice=True)
    assert sampled[0] != sampled[1]
    greedy = await speak(tokens, "temperature:0", "fine_temperature:0", twice=True)
    assert greedy[0] == greedy[1]


async def test_semantic_tokens_bound_each_sentence(roots: Path, model: Path) -> None:
    lengths = []
    for tokens in (8, 32):
        async with serving_tts(
            BarkCpp(), roots, [model.parent], Model=str(model), Options=[f"semantic_tokens:{tokens}", THREADS]
        ) as (served, loaded):
            assert f"up to {tokens} semantic tokens a sentence" in loaded
            lengths.append(len((await stream(served, pb.TTSRequest(text="hello."))).pcm))
    assert lengths[1] > 3 * lengths[0]


async def test_health_answers_while_a_generation_runs(roots: Path, model: Path) -> None:
    # 256 semantic tokens a sentence: generations long enough to probe between.
    options = ["semantic_tokens:256", THREADS]
    async with serving_tts(BarkCpp(), roots, [model.parent], Model=str(model), Options=options) as (
        served,
        _,
    ):
        speaking = asyncio.create_task(tts(served, roots / "long.wav", " ".join(SENTENCES)))
        waits = []
        while not speaking.done():
            started = time.perf_counter()
            assert await served.client.healthy()
            waits.append(time.perf_counter() - started)
            await asyncio.sleep(0)
        assert (await speaking).success
        assert len(waits) > 3
        assert max(waits) < 0.5, waits  # the engine runs in a worker thread, not on the event loop


async def test_a_voice_is_not_found_bark_cpp_has_no_presets(bark: Served, roots: Path) -> None:
    err = await error_of(bark, roots / "x.wav", voice="v2/en_speaker_6")
    assert err.status == Status.NOT_FOUND
    assert "unknown voice 'v2/en_speaker_6'; bark.cpp has no voice presets" in (err.message or "")
    with pytest.raises(GRPCError) as streamed:
        await stream(bark, pb.TTSRequest(text="Hi.", voice="v2/en_speaker_6"))
    assert streamed.value.status == Status.NOT_FOUND
    assert not (roots / "x.wav").exists()
    assert (await tts(bark, roots / "x.wav")).success  # and it serves on


async def test_a_language_bark_does_not_speak_or_another_model_is_refused(bark: Served, roots: Path) -> None:
    err = await error_of(bark, roots / "x.wav", language="xx-YY")
    assert err.status == Status.INVALID_ARGUMENT
    assert "it speaks en, de, es" in (err.message or "")
    assert (await tts(bark, roots / "x.wav", language="fr_FR")).success
    err = await error_of(bark, roots / "x.wav", model="/models/bark-small.bin")
    assert err.status == Status.NOT_FOUND
    assert "bark-tiny.bin is" in (err.message or "")
    # Core's form of the loaded model's name (its models dir joined with the name) is fine.
    assert (await tts(bark, roots / "x.wav", model="/models/bark-tiny.bin")).success


async def test_a_relative_model_name_is_looked_up_in_the_models_dir(roots: Path, model: Path) -> None:
    # The default semantic tokens (681, the most): a full-length sentence, which bark.cpp survives.
    async with serving_tts(
        BarkCpp(), roots, [model.parent], Model=model.name, ModelPath=str(model.parent), Options=[THREADS]
    ) as (served, loaded):
        assert loaded.endswith(", 1 thread")
        assert (await tts(served, roots / "rel.wav", "hello.")).success


def _cut(source: Path, target: Path, keep: int) -> Path:
    target.write_bytes(source.read_bytes()[:keep])
    return target


def _broken(model: Path, folder: Path) -> list[Path]:
    """Files bark.cpp would misread: each named for what is wrong with it."""
    size = model.stat().st_size
    gguf = folder / "llama.gguf"
    gguf.write_bytes(b"GGUF" + bytes(64))
    whisper = folder / "ggml-tiny.bin"  # whisper.cpp's magic, then its own header
    whisper.write_bytes(struct.pack("<12i", 0x67676D6C, 51864, 1500, 384, 6, 6, 448, 384, 6, 4, 80, 1))
    huge = folder / "huge-vocab.bin"
    huge.write_bytes(struct.pack("<ii", 0x67676D6C, 2**30))
    truncated = _cut(model, folder / "truncated.bin", size // 2)
    short_codec = _cut(model, folder / "short-codec.bin", size - 100)
    f32 = build(folder / "f32-codec.bin", codec_f16=False)
    return [gguf, whisper, huge, truncated, short_codec, f32]


async def test_loadmodel_refuses_what_bark_cpp_cannot_load_whole(model: Path, tmp_path: Path) -> None:
    gguf, whisper, huge, truncated, short_codec, f32 = await asyncio.to_thread(_broken, model, tmp_path)
    async with serving(BarkCpp()) as served:
        for name, options, reason in [
            (str(tmp_path / "missing.bin"), [], "no bark.cpp model at"),
            (str(tmp_path), [], "is a folder; bark.cpp loads one GGML file"),
            (str(gguf), [], "is a GGUF file (an LLM format), not a bark.cpp model"),
            (str(whisper), [], "not a whole bark.cpp model"),
            (str(huge), [], "a vocabulary of 1073741824 words"),
            (str(truncated), [], "the file ends inside"),
            (str(short_codec), [], "the file ends inside"),
            (str(f32), [], "has its codec in f32; bark.cpp's Encodec needs f16 weights"),
            # More would overrun bark.cpp's fine-stage buffer and abort the process.
            (str(model), ["semantic_tokens:682"], "less than or equal to 681"),
            (str(model), ["temperature:-1"], "greater than or equal to 0"),
        ]:
            result = await served.client.backend.LoadModel(pb.ModelOptions(Model=name, Options=options))
            assert not result.success, name
            assert reason in result.message, result.message
        assert await served.client.healthy()
        loaded = await served.client.backend.LoadModel(pb.ModelOptions(Model=str(model)))
        assert loaded.success, loaded.message  # and it loads a whole one after all that


async def test_the_model_builder_is_deterministic(tmp_path: Path) -> None:
    first, second = build(tmp_path / "a.bin"), build(tmp_path / "b.bin")
    assert first.read_bytes() == second.read_bytes()


class TestEdges(WordlessEdges):
    @pytest.fixture
    def speaker(self, bark: Served) -> Served:
        return bark
