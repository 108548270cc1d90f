"""faster-whisper (CTranslate2 Whisper): the only module that imports it. Plain types in and out."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import ctranslate2
import faster_whisper

from localfleet.audio import Asked, Segment, Transcription, Word
from localfleet.cpus import cap_threads

if TYPE_CHECKING:
    import numpy as np


def cuda_devices() -> int:
    return int(ctranslate2.get_cuda_device_count())


class Transcriber:
    def __init__(self, model: str, *, device: str, compute_type: str, threads: int, beam_size: int) -> None:
        self.model = faster_whisper.WhisperModel(
            model, device=device, compute_type=compute_type, cpu_threads=cap_threads(threads)
        )
        self.beam_size = beam_size
        self.multilingual = bool(self.model.model.is_multilingual)
        self.languages = set(self.model.supported_languages)

    def start(self, audio: np.ndarray, asked: Asked) -> tuple[Transcription, Iterator[Segment]]:
        """Features and language now; segments lazily, one decoded window at a time.

        Closing the iterator stops decoding: nothing past the segment being decoded is computed.
        `asked.threads` cannot change CTranslate2's pool once loaded; LoadModel's Threads sets it.
        """
        language = asked.language
        kwargs: dict[str, Any] = {}
        if asked.temperature > 0:  # 0 keeps Whisper's fallback schedule, which starts at 0
            kwargs["temperature"] = asked.temperature
        segments, info = self.model.transcribe(
            audio,
            language=language or None,
            task="translate" if asked.translate else "transcribe",
            beam_size=self.beam_size,
            initial_prompt=asked.prompt or None,
            word_timestamps=asked.words,
            vad_filter=False,
            **kwargs,
        )
        return Transcription(info.language, float(info.duration)), _plain(segments)


def _plain(segments: Iterator[Any]) -> Iterator[Segment]:
    try:
        for index, seg in enumerate(segments):
            yield Segment(
                id=index,
                start=float(seg.start),
                end=float(seg.end),
                text=seg.text,
                tokens=list(seg.tokens),
                words=[Word(float(w.start), float(w.end), w.word) for w in seg.words or ()],
            )
    finally:
        close = getattr(segments, "close", None)
        if close is not None:
            close()
