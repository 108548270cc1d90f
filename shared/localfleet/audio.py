"""Uploaded audio (wav, mp3, flac, ogg, or anything FFmpeg reads) decoded to mono 16 kHz float32.

Speech backends share this so every one of them accepts the same files and reports a bad file the same
way. The decoder (PyAV, FFmpeg's libraries) is imported on first use, never at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from localfleet.errors import BadInput, EngineFailure

if TYPE_CHECKING:
    import numpy as np

SAMPLE_RATE = 16_000
FORMATS = "wav, mp3, flac, ogg"


def decode(path: Path | str, field: str = "dst") -> np.ndarray:
    """Mono float32 samples in [-1, 1] at 16 kHz; BadInput naming `field` when it is not audio."""
    import numpy as np

    try:
        import av
    except ImportError as exc:  # a backend whose extra lacks the decoder: say which package
        raise EngineFailure("decoding audio needs PyAV: pip install av") from exc

    path = Path(path)
    if path.stat().st_size == 0:
        raise BadInput(f"{field} {str(path)!r} is an empty file; send an audio file ({FORMATS})")
    chunks: list[np.ndarray] = []
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise BadInput(f"{field} {str(path)!r} has no audio stream; send an audio file ({FORMATS})")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            for frame in container.decode(stream):
                frame.pts = None  # let the resampler count samples; some containers carry broken stamps
                chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
            chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
    except av.error.FFmpegError as exc:
        raise BadInput(
            f"{field} {str(path)!r} is not audio that can be decoded ({exc.strerror or exc}); send {FORMATS}"
        ) from None
    samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    if samples.size == 0:
        raise BadInput(f"{field} {str(path)!r} holds no audio samples; send a non-empty recording")
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
