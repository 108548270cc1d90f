"""Text to speech for every TTS backend: the TTS and TTSStream RPCs over an engine that yields PCM.

A TTS backend subclasses `SpeechBackend` and implements `utterance()`: resolve the request's voice,
language and model into an `Utterance` (a sample rate and a generator of PCM chunks), or raise
`BadInput` / `NotFound` naming what it has. This module owns the rest, the same for every engine:

- Audio is PCM, 16-bit signed little-endian, mono, at the voice's own sample rate.
- `TTS` writes a RIFF/WAVE file of that PCM to `dst` through `files.replacing`, so `success=true`
  always means a complete file, on disk, and a failure leaves no partial one.
- `TTSStream` sends one `Reply` per chunk as the engine finishes it (a sentence, for both Piper and
  Kokoro), so the first audio arrives before the rest of the text is synthesized. `Reply.audio` is raw
  PCM with no WAV header. The first `Reply` also carries, in `message`, the JSON object
  `{"sample_rate": N, "channels": 1, "sample_format": "s16le"}`: LocalAI core reads `sample_rate`
  from it and writes the WAV header itself (its `ModelTTSStream`).
- Memory: an engine's memory grows with what it synthesizes in one run, so engines take the text in
  pieces of at most `PIECE_CHARS` (`split_text`), and one request's text is capped by the LoadModel
  option `max_chars` (`SpeechOptions`, default `MAX_CHARS`).
"""

from __future__ import annotations

import json
import re
import threading
import unicodedata
import wave
from collections.abc import AsyncIterator, Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from localfleet import files
from localfleet.backend import Backend
from localfleet.call import Call
from localfleet.errors import BadInput, NotFound
from localfleet.inputs import excerpt
from localfleet.memory import LARGE_REQUEST_BYTES, trim_after_large
from localfleet.options import BackendOptions
from localfleet.paths import WAV
from localfleet.proto import backend_pb2 as pb

if TYPE_CHECKING:
    import numpy.typing as npt

CHANNELS = 1
#: file extensions that make a `voice` a reference recording (what `audio.decode` reads)
RECORDINGS = (".wav", ".mp3", ".flac", ".ogg", ".m4a", ".opus")
SAMPLE_WIDTH = 2  # bytes: s16le


#: the most characters an engine is given at once. One run's memory grows with its length (Piper: 1.3
#: GiB for 1,000 characters with no sentence end in them, 0.25 GiB for 200)
PIECE_CHARS = 200
#: the most characters of text one request may send, unless the LoadModel option max_chars says
#: otherwise: about 20 minutes of speech
MAX_CHARS = 20_000
#: text longer than this leaves the C heap holding what the engine's runs freed, worth handing back
#: (Piper: 40-75 MiB after 1,000 characters or more)
TRIM_ABOVE_CHARS = 100
# Where a piece may end, best first: after a sentence, after a clause, at a space. A mark counts only
# before a space (or CJK's, which take none), so "3.5" and "U.S.A" stay whole.
_BREAKS = (
    re.compile(r"[.!?\u2026]+[\"'\u201d\u2019)\]]*(?=\s)|[\u3002\uff01\uff1f]+|\n"),
    re.compile(r"[,;:\u2013\u2014]+[\"'\u201d\u2019)\]]*(?=\s)|[\u3001\uff0c\uff1b\uff1a]+"),
    re.compile(r"\s"),
)


class SpeechOptions(BackendOptions):
    """LoadModel options of every TTS backend."""

    max_chars: int = Field(MAX_CHARS, ge=1, description="the most characters of text one request may send")


@dataclass(frozen=True)
class SpeechRequest:
    """What a TTS or TTSStream request asks for, as plain values."""

    text: str
    voice: str = ""
    language: str = ""
    #: the voice model LocalAI core names: its models dir joined with the model's file when that exists
    model: str = ""
    #: `voice` as a reference recording to clone, checked against the path roots (backends that clone)
    voice_file: Path | None = None
    #: the call's stop flag, for engines whose single steps run long enough to check it inside them
    stop: threading.Event | None = None


@dataclass(frozen=True)
class Utterance:
    """One request's synthesis, resolved by the backend and not yet run."""

    sample_rate: int
    #: yields s16le mono PCM, one chunk per sentence (or whatever unit the engine finishes at once)
    pcm: Callable[[], Iterator[bytes]]
    #: says what speaks, for the Result message (e.g. "voice en_US-joe-medium")
    speaker: str


@dataclass(frozen=True)
class Written:
    path: Path
    frames: int
    sample_rate: int

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


def require_text(text: str, limit: int = MAX_CHARS) -> str:
    if not text.strip():
        raise BadInput("text is empty or only whitespace; send the words to speak")
    if "\0" in text:  # phonemizers take C strings: a NUL would end the text early, or fail inside
        raise BadInput(f"text has a null character at offset {text.index(chr(0))}; send plain text")
    if len(text) > limit:
        raise BadInput(
            f"text {excerpt(text, 40)} is over the limit of {limit} characters a request: send it in "
            "parts, or raise the limit with the LoadModel option max_chars"
        )
    return text


def split_text(text: str, limit: int = PIECE_CHARS) -> list[str]:
    """`text` in pieces of at most `limit` characters, for an engine to synthesize one at a time.

    Each piece ends at its last sentence end within the limit, else its last clause mark, else its last
    space, else it is cut at the limit. Only the whitespace between pieces is dropped.
    """
    pieces: list[str] = []
    start, end = 0, len(text)
    while True:
        while start < end and text[start].isspace():
            start += 1
        if start == end:
            return pieces
        cut = end if end - start <= limit else _cut(text, start, limit)
        pieces.append(text[start:cut].rstrip())
        start = cut


def _cut(text: str, start: int, limit: int) -> int:
    """Where the piece from `start` (not whitespace) ends: the last break of the best kind in reach."""
    stop = start + limit
    for pattern in _BREAKS:
        cut = 0
        # One character past the limit is looked at: a break there may end in whitespace, which is dropped.
        for match in pattern.finditer(text, start, stop + 1):
            if match.end() <= stop or text[match.end() - 1].isspace():
                cut = match.end()
        if cut:
            return cut
    while stop > start + 1 and unicodedata.combining(text[stop]):
        stop -= 1  # keep an accent with its letter
    return stop


def require_model(asked: str, names: Collection[str], loaded: str) -> None:
    """Refuse a request that names a model other than the loaded one (its file or folder name)."""
    if asked and Path(asked).name not in names:
        raise NotFound(f"model {excerpt(asked)} is not loaded here ({loaded} is); call LoadModel for it")


def is_recording(voice: str) -> bool:
    """Whether a `voice` names a file (a reference recording) rather than one of a model's voices."""
    return "/" in voice or voice.lower().endswith(RECORDINGS)


def pcm16(samples: npt.NDArray[Any]) -> bytes:
    """float samples in [-1, 1] (clipped) as s16le PCM."""
    import numpy as np

    pcm: bytes = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    return pcm


def stream_header(sample_rate: int) -> bytes:
    """The JSON that the first TTSStream reply carries in `message`."""
    return json.dumps({"sample_rate": sample_rate, "channels": CHANNELS, "sample_format": "s16le"}).encode()


NO_SPEECH = "the text produced no speech (nothing but punctuation or symbols?)"


def write_wav(dst: Path, utterance: Utterance, check: Callable[[], None], empty: str = NO_SPEECH) -> Written:
    """Synthesize into `dst` through `files.replacing` (blocking): a complete file or none.

    Calls `check` (the call's `raise_if_stopped`) between chunks.
    """
    frames = 0
    with files.replacing(dst, WAV) as handle, wave.open(handle, "wb") as wav:
        wav.setnchannels(CHANNELS)
        wav.setsampwidth(SAMPLE_WIDTH)
        wav.setframerate(utterance.sample_rate)
        for chunk in _chunks(utterance, check):
            wav.writeframes(chunk)
            frames += len(chunk) // SAMPLE_WIDTH
        if not frames:
            raise BadInput(empty)
        wav.close()  # writes the final sizes into the header before the data is synced
    return Written(dst, frames, utterance.sample_rate)


def _chunks(utterance: Utterance, check: Callable[[], None]) -> Iterator[bytes]:
    chunks = utterance.pcm()
    try:
        for chunk in chunks:
            check()
            if chunk:
                yield chunk
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


class SpeechBackend(Backend):
    """Base of the TTS backends: TTS and TTSStream over `utterance()`."""

    #: the loaded model's option max_chars, which `load()` sets
    max_chars = MAX_CHARS
    #: whether `voice` may name a reference recording to clone (a path, or a name with an audio
    #: extension); such a voice reaches `utterance()` as `voice_file`, confined to the path roots
    clones_voices = False

    def utterance(self, request: SpeechRequest) -> Utterance:
        """Resolve voice, language and model for one request (blocking, in a worker thread).

        Raise `NotFound` for a voice, model or language this backend does not have, naming those it
        has, and `BadInput` for a request it cannot make sense of. May load a voice model.
        """
        raise NotImplementedError

    async def _resolve(self, request: pb.TTSRequest, call: Call) -> Utterance:
        # `language` is proto3 optional: unset reads as "".
        voice = request.voice.strip()
        voice_file = None
        if self.clones_voices and is_recording(voice):
            voice_file = await call.run(
                call.paths.readable, voice, "voice"
            )  # file system calls: off the loop
        asked = SpeechRequest(
            request.text, voice, request.language.strip(), request.model, voice_file, call.stop
        )
        return await call.run(self.utterance, asked)

    async def TTS(self, request: pb.TTSRequest, call: Call) -> pb.Result:
        require_text(request.text, self.max_chars)
        dst = await call.run(call.paths.writable, request.dst, "dst", WAV)  # file system calls: off the loop
        utterance = await self._resolve(request, call)
        try:
            written = await call.run(write_wav, dst, utterance, call.raise_if_stopped)
        finally:
            _hand_back_memory(request.text)
        return pb.Result(
            success=True,
            message=f"wrote {written.seconds:.2f} s of {written.sample_rate} Hz speech "
            f"({utterance.speaker}) to {written.path}",
        )

    async def TTSStream(self, request: pb.TTSRequest, call: Call) -> AsyncIterator[pb.Reply]:
        require_text(request.text, self.max_chars)
        utterance = await self._resolve(request, call)
        header: bytes | None = stream_header(utterance.sample_rate)
        try:
            async for chunk in call.iterate(utterance.pcm):
                if not chunk:
                    continue
                if header is not None:
                    yield pb.Reply(message=header, audio=chunk)
                    header = None
                else:
                    yield pb.Reply(audio=chunk)
        finally:
            _hand_back_memory(request.text)
        if header is not None:
            raise BadInput(NO_SPEECH)


def _hand_back_memory(text: str) -> None:
    """After a long text, trim the C heap shortly (one trim at a time, however many requests end)."""
    if len(text) > TRIM_ABOVE_CHARS:
        trim_after_large(LARGE_REQUEST_BYTES)  # what the engine's runs freed, not the request's size
