"""Speech to text for every transcription backend: audio decoding and the two transcription RPCs.

- `decode()`: an uploaded file (wav, mp3, flac, ogg, or anything FFmpeg reads) to mono 16 kHz float32,
  so every backend accepts the same files and reports a bad one the same way. The decoder (PyAV) is
  imported on first use, never at start-up.
- `TranscriptionBackend`: AudioTranscription and AudioTranscriptionStream over an engine that yields
  plain `Segment`s (times in seconds). Here, the same for every engine: `dst` checked against the path
  roots, times sent as int64 nanoseconds and kept inside the audio, segment texts joined with single
  spaces, a stream sending one `delta` per segment as it is decoded (the deltas add up to the final
  `text`) and then the `final_result`; a caller that leaves stops decoding at the next segment.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from localfleet.backend import Backend
from localfleet.call import Call
from localfleet.errors import BadInput, EngineFailure, NotLoaded
from localfleet.inputs import excerpt
from localfleet.paths import PATH_CHARS
from localfleet.proto import backend_pb2 as pb

if TYPE_CHECKING:
    import numpy.typing as npt

SAMPLE_RATE = 16_000
FORMATS = "wav, mp3, flac, ogg"
#: how messages name TranscriptRequest.dst, which holds the audio file to read
AUDIO_FIELD = "the audio file (dst)"


def decode(path: Path | str, field: str = "dst", rate: int = SAMPLE_RATE) -> npt.NDArray[Any]:
    """Mono float32 samples in [-1, 1] at `rate` (16 kHz: what speech to text takes); BadInput naming
    `field` when it is not audio."""
    import numpy as np

    try:
        import av
    except ImportError as exc:  # a backend whose extra lacks the decoder: say which package
        raise EngineFailure("decoding audio needs PyAV: pip install av") from exc

    path = Path(path)
    named = f"{field} {excerpt(str(path), PATH_CHARS)}"
    if path.stat().st_size == 0:
        raise BadInput(f"{named} is an empty file; send an audio file ({FORMATS})")
    chunks: list[npt.NDArray[Any]] = []
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise BadInput(f"{named} has no audio stream; send an audio file ({FORMATS})")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            for frame in container.decode(stream):
                frame.pts = None  # let the resampler count samples; some containers carry broken stamps
                chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
            chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
    except av.error.FFmpegError as exc:
        raise BadInput(
            f"{named} is not audio that can be decoded ({exc.strerror or exc}); send {FORMATS}"
        ) from None
    samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    if samples.size == 0:
        raise BadInput(f"{named} holds no audio samples; send a non-empty recording")
    return np.clip(samples.astype(np.float32, copy=False), -1.0, 1.0)


# -- what a speech-to-text engine hands its servicer (plain types; times in seconds) -------------------
@dataclass(frozen=True)
class Word:
    start: float
    end: float
    text: str


@dataclass(frozen=True)
class Segment:
    id: int
    start: float
    end: float
    text: str
    tokens: list[int] = field(default_factory=list)
    words: list[Word] = field(default_factory=list)


@dataclass(frozen=True)
class Transcription:
    """What is known before the first segment: the language spoken (or asked for) and the audio's length."""

    language: str
    duration: float


def nanoseconds(seconds: float) -> int:
    """Transcript times travel as int64 nanoseconds (the contract's unit)."""
    return round(seconds * 1e9)


class TextJoiner:
    """Joins segment texts with single spaces; each `add` returns the piece to stream (the delta).

    The deltas of a stream concatenate to exactly the final `text`.
    """

    def __init__(self) -> None:
        self.text = ""

    def add(self, segment_text: str) -> str:
        piece = segment_text.strip()
        if not piece:
            return ""
        delta = f" {piece}" if self.text else piece
        self.text += delta
        return delta


@dataclass(frozen=True)
class Asked:
    """What a transcription request asks of the engine, as plain values."""

    language: str  # "" = detect
    translate: bool
    prompt: str
    temperature: float  # 0 = the engine's default schedule
    threads: int  # 0 = the engine's default
    words: bool  # word timestamps wanted

    def check_language(self, languages: set[str], multilingual: bool) -> None:
        """Refuse a language or translation the loaded Whisper model cannot do, naming what it can."""
        if self.language and self.language not in languages:
            if not multilingual:
                raise BadInput(
                    f"language {excerpt(self.language)}: this model is English-only; send 'en' or leave it "
                    "empty, or load a multilingual Whisper model"
                )
            raise BadInput(
                f"language {excerpt(self.language)} is not a Whisper language code (e.g. 'en', 'de', 'ja')"
            )
        if self.translate and not multilingual:
            raise BadInput("translate: this model is English-only; load a multilingual one to translate")


class Transcriber(Protocol):
    #: the language codes the loaded model knows, and whether it can do more than English
    languages: set[str]
    multilingual: bool

    def start(self, audio: npt.NDArray[Any], asked: Asked) -> tuple[Transcription, Iterator[Segment]]:
        """Blocking work up to the first segment (features, language); then segments, lazily.

        Closing the iterator must stop decoding: nothing past the segment in progress is computed.
        """
        ...


class TranscriptionBackend(Backend):
    """A speech-to-text backend: sets `self.transcriber` in `load()`; `unload()` clears it."""

    transcriber: Transcriber | None = None

    def unload(self) -> str:
        self.transcriber = None
        return "model released"

    async def AudioTranscription(self, request: pb.TranscriptRequest, call: Call) -> pb.TranscriptResult:
        # The stream's last message is the whole result; its deltas are simply not sent.
        replies = [reply async for reply in self.AudioTranscriptionStream(request, call)]
        return replies[-1].final_result

    async def AudioTranscriptionStream(
        self, request: pb.TranscriptRequest, call: Call
    ) -> AsyncIterator[pb.TranscriptStreamResponse]:
        info, segments = await call.run(self._start, request, call)
        joiner = TextJoiner()
        out = []
        async for segment in call.iterate(iter, segments):
            delta = joiner.add(segment.text)
            call.count_tokens(len(segment.tokens))
            out.append(_to_proto(segment, info.duration))
            if delta:
                yield pb.TranscriptStreamResponse(delta=delta)
        final = pb.TranscriptResult(
            segments=out, text=joiner.text, language=info.language, duration=info.duration
        )
        yield pb.TranscriptStreamResponse(final_result=final)

    def _start(self, request: pb.TranscriptRequest, call: Call) -> tuple[Transcription, Iterator[Segment]]:
        transcriber = self.transcriber
        if transcriber is None:
            raise NotLoaded()
        # `dst` is the audio file to transcribe (the contract's name): say what it is, not only the field.
        samples = decode(call.paths.readable(request.dst, AUDIO_FIELD), AUDIO_FIELD)
        call.raise_if_stopped()
        asked = Asked(
            language=request.language.strip(),
            translate=request.translate,
            prompt=request.prompt,
            temperature=request.temperature,
            threads=request.threads,
            words="word" in request.timestamp_granularities,
        )
        asked.check_language(transcriber.languages, transcriber.multilingual)
        return transcriber.start(samples, asked)


def _to_proto(segment: Segment, duration: float) -> pb.TranscriptSegment:
    def ns(seconds: float) -> int:  # Whisper's 20 ms time grid can step past the last sample
        return nanoseconds(min(max(seconds, 0.0), duration))

    return pb.TranscriptSegment(
        id=segment.id,
        start=ns(segment.start),
        end=ns(segment.end),
        text=segment.text.strip(),
        tokens=segment.tokens,
        words=[
            pb.TranscriptWord(start=ns(w.start), end=ns(w.end), text=w.text.strip()) for w in segment.words
        ],
    )
