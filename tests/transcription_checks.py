"""What the transcription tests check, shared by the faster-whisper and whisper (whisper.cpp) tests.

Both engines answer through localfleet.audio (TranscriptionBackend, decode, Asked), so the same request
must get the same answer from either: the checks here run once per engine, on Whisper tiny.en.

A backend's tests use them in two parts: its conftest.py describes the backend in an `engine` fixture
and imports `whisper` from here; its test_servicer.py collects the shared tests with
`class TestTranscription(TranscriptionChecks)`, beside the tests of what only that engine does.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from localfleet.audio import TranscriptionBackend
from localfleet.proto import backend_pb2 as pb
from localfleet.testing import Served, serving
from tests.audio_fixtures import SENTENCE, Clip
from tests.wording import words


@dataclass(frozen=True)
class Engine:
    """The backend under test: its servicer, and the name LoadModel takes for its tiny.en model."""

    servicer: Callable[[], TranscriptionBackend]
    model: str
    # Part of LoadModel's answer when it refuses what this engine cannot serve: the reason is the engine's.
    refuses_llm_name: str
    refuses_gguf_file: str
    refuses_empty_folder: str


@asynccontextmanager
async def loaded(engine: Engine, **settings: Any) -> AsyncIterator[Served]:
    """A fresh server of `engine` with tiny.en loaded; `settings` as for `serving`."""
    async with serving(engine.servicer(), **settings) as served:
        result = await served.client.backend.LoadModel(pb.ModelOptions(Model=engine.model, Threads=2))
        assert result.success, result.message
        assert "English-only" in result.message
        yield served


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def whisper(engine: Engine) -> AsyncIterator[Served]:
    """The backend under test with tiny.en loaded, once per test module: loading is the slow part."""
    async with loaded(engine) as served:
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


class TranscriptionChecks:
    """The tests every transcription backend passes; subclass it as `TestTranscription` to collect them."""

    pytestmark = pytest.mark.asyncio(loop_scope="module")

    async def test_a_piper_clip_comes_back_word_for_word(self, whisper: Served, speech_clip: Clip) -> None:
        result = await transcribe(whisper, speech_clip.path)
        assert result.text == SENTENCE
        assert result.language == "en"
        assert result.duration == pytest.approx(speech_clip.seconds, abs=0.05)
        assert result.segments
        assert " ".join(s.text for s in result.segments) == result.text
        assert [s.id for s in result.segments] == list(range(len(result.segments)))
        assert all(s.tokens for s in result.segments)

    async def test_segment_times_are_increasing_nanoseconds_inside_the_clip(
        self, whisper: Served, long_clip: Clip
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
        self, whisper: Served, speech_formats: dict[str, Path], fmt: str
    ) -> None:
        result = await transcribe(whisper, speech_formats[fmt])
        assert words(result.text) == words(SENTENCE)

    async def test_word_timestamps_when_asked(self, whisper: Served, speech_clip: Clip) -> None:
        plain = await transcribe(whisper, speech_clip.path)
        assert not any(s.words for s in plain.segments)
        result = await transcribe(whisper, speech_clip.path, timestamp_granularities=["segment", "word"])
        spoken = [w for s in result.segments for w in s.words]
        assert words(" ".join(w.text for w in spoken)) == words(SENTENCE)
        for before, after in itertools.pairwise(spoken):
            assert before.start <= before.end <= after.start
        assert spoken[0].start >= 0
        assert spoken[-1].end <= speech_clip.seconds * 1e9

    async def test_stream_sends_segments_before_the_whole_file_is_decoded(
        self, whisper: Served, long_clip: Clip
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

    async def test_cancelling_a_stream_stops_decoding(self, whisper: Served, long_clip: Clip) -> None:
        full_started = time.perf_counter()
        await transcribe(whisper, long_clip.path)
        full = time.perf_counter() - full_started

        async with whisper.client.backend.AudioTranscriptionStream.open() as stream:
            opened = time.perf_counter()
            await stream.send_message(pb.TranscriptRequest(dst=str(long_clip.path)), end=True)
            first = await stream.recv_message()
            assert first is not None
            assert first.delta
            cancelled_at = time.perf_counter()
            first_window = cancelled_at - opened
            await stream.cancel()
        # The worker finishes the window it is on, then stops: the slot frees long before a full decode
        # (four windows). The first window's time is the yardstick under the machine's load of the moment.
        limit = max(0.5 * full, 2 * first_window)
        runtime = whisper.runtime
        while runtime.admission.running:
            assert time.perf_counter() - cancelled_at < limit, "decoding went on after cancel"
            await asyncio.sleep(0.02)
        status = await whisper.client.backend.Status(pb.HealthMessage())
        assert status.state == pb.StatusResponse.READY

    async def test_missing_file_is_not_found(self, whisper: Served, tmp_path: Path) -> None:
        err = await error_of(whisper, tmp_path / "nope.wav")
        assert err.status == Status.NOT_FOUND
        assert "nope.wav" in (err.message or "")

    async def test_empty_and_non_audio_files_are_invalid(self, whisper: Served, tmp_path: Path) -> None:
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
        assert "the audio file (dst) is empty" in (err.message or "")

        err = await error_of(whisper, tmp_path)  # a folder that exists is not "missing"
        assert err.status == Status.INVALID_ARGUMENT
        assert "is a folder" in (err.message or "")

    async def test_a_language_or_translation_the_model_lacks_is_invalid(
        self, whisper: Served, speech_clip: Clip
    ) -> None:
        err = await error_of(whisper, speech_clip.path, language="de")
        assert err.status == Status.INVALID_ARGUMENT
        assert "English-only" in (err.message or "")
        err = await error_of(whisper, speech_clip.path, translate=True)
        assert err.status == Status.INVALID_ARGUMENT
        assert "translate" in (err.message or "")

    async def test_the_process_keeps_serving_after_bad_input(
        self, whisper: Served, speech_clip: Clip, tmp_path: Path
    ) -> None:
        (tmp_path / "junk.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
        await error_of(whisper, tmp_path / "junk.wav")
        assert (await whisper.client.backend.Health(pb.HealthMessage())).message == b"OK"
        assert (await transcribe(whisper, speech_clip.path)).text == SENTENCE

    async def test_a_path_outside_the_roots_is_refused(
        self, engine: Engine, speech_clip: Clip, tmp_path: Path
    ) -> None:
        # A model given by path lies in the operator's models folder, which roots do not need to name.
        models = str(Path(engine.model).parent) if Path(engine.model).is_absolute() else ""
        async with loaded(engine, path_roots=[str(tmp_path)], model_path=models) as served:
            err = await error_of(served, speech_clip.path)
            assert err.status == Status.INVALID_ARGUMENT
            assert "outside the folders" in (err.message or "")
            inside = tmp_path / "upload.wav"
            inside.write_bytes(speech_clip.path.read_bytes())
            assert (await transcribe(served, inside)).text == SENTENCE

    async def test_models_it_cannot_serve_are_refused_at_once(self, engine: Engine, tmp_path: Path) -> None:
        gguf = tmp_path / "model.gguf"
        gguf.write_bytes(b"GGUF" + bytes(60))  # an LLM's file, long enough for its header to be read
        (tmp_path / "empty").mkdir()
        async with serving(engine.servicer()) as served:
            for model, why in (
                ("llama-3-8b.gguf", engine.refuses_llm_name),
                ("llama-3-8b-instruct", engine.refuses_llm_name),
                (str(gguf), engine.refuses_gguf_file),
                (str(tmp_path / "empty"), engine.refuses_empty_folder),
            ):
                started = time.perf_counter()
                result = await served.client.backend.LoadModel(pb.ModelOptions(Model=model))
                assert not result.success
                assert "cannot serve" in result.message
                assert why in result.message
                assert time.perf_counter() - started < 1
            status = await served.client.backend.Status(pb.HealthMessage())
            assert status.state == pb.StatusResponse.UNINITIALIZED

    async def test_before_load_a_transcription_is_failed_precondition(
        self, engine: Engine, speech_clip: Clip
    ) -> None:
        async with serving(engine.servicer()) as served:
            err = await error_of(served, speech_clip.path)
            assert err.status == Status.FAILED_PRECONDITION
