"""Bark on bark.cpp (bark-cpp-python) behind plain Python types: the only module that imports bark_cpp
and numpy.

bark.cpp runs Bark's three GPTs (semantic, coarse, fine) and Encodec on one context, one generation at a
time; the context's random generator is seeded once, at load, so a fresh load with the same seed
speaks the same requests the same way. One generation makes at most `semantic_tokens` semantic tokens
(49.9 a second of audio; the servicer caps them at 681, 13.6 s), so text goes in a sentence (or a
piece of at most `PIECE_CHARS` characters) at a time, and each piece's audio is handed on as soon as it
is made.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from bark_cpp import Bark  # type: ignore[import-untyped]

from localfleet.errors import EngineFailure
from localfleet.speech import PIECE_CHARS, pcm16, split_text
from localfleet_bark_cpp.modelfile import Layout

# After . ! ? ; : and a space, or a line break: Bark speaks one such piece per generation.
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+|\n+")


@dataclass(frozen=True)
class Sampling:
    """What bark.cpp's context takes at load and keeps for every generation."""

    temperature: float
    fine_temperature: float
    min_eos_p: float
    semantic_tokens: int
    seed: int


@dataclass
class Model:
    name: str
    layout: Layout
    threads: int
    _bark: Any

    @property
    def sample_rate(self) -> int:
        return self.layout.sample_rate

    def pieces(self, text: str) -> list[str]:
        """What one generation each speaks: sentences, a long one cut at `PIECE_CHARS` (bark.cpp keeps
        256 tokens of a prompt), none without a letter or digit (no words: bark.cpp would babble)."""
        return [p for p in split_sentences(text) if any(c.isalnum() for c in p)]

    def pcm(self, text: str) -> Iterator[bytes]:
        """s16le mono PCM, one chunk per piece as it is generated (blocking)."""
        for piece in self.pieces(text):
            audio = self.generate(piece)
            if audio.size:
                yield pcm16(audio)

    def generate(self, text: str) -> np.ndarray:
        """One bark.cpp generation: float samples in [-1, 1], copied out of the context's buffer (the
        next generation overwrites it)."""
        if not self._bark.generate_audio_ok(text, self.threads):
            raise EngineFailure("bark.cpp failed to generate audio for this text (its reason is on stderr)")
        return np.array(self._bark.audio(), dtype=np.float32, copy=True)

    def close(self) -> None:
        self._bark.close()


def split_sentences(text: str, limit: int = PIECE_CHARS) -> list[str]:
    return [piece for sentence in _SENTENCE_END.split(text) for piece in split_text(sentence, limit)]


class _Context(Bark):  # type: ignore[misc]
    """bark_cpp.Bark with a failure reported as a value, and the audio as bark.cpp's own buffer."""

    def generate_audio_ok(self, text: str, threads: int) -> bool:
        return bool(self._ctx.generate_audio(text.encode("utf-8"), threads))

    def audio(self) -> np.ndarray:
        size = self._ctx.get_audio_data_size()
        if size <= 0:
            return np.zeros(0, dtype=np.float32)
        return np.ctypeslib.as_array(self._ctx.get_audio_data(), shape=(size,))


def load(path: Path, layout: Layout, sampling: Sampling, threads: int) -> Model:
    try:
        bark = _Context(
            str(path),
            temp=sampling.temperature,
            fine_temp=sampling.fine_temperature,
            min_eos_p=sampling.min_eos_p,
            n_steps_text_encoder=sampling.semantic_tokens,
            sample_rate=layout.sample_rate,
            seed=sampling.seed,
        )
    except RuntimeError as err:
        raise EngineFailure(f"bark.cpp could not load {path.name} ({err}; its reason is on stderr)") from err
    return Model(path.name, layout, threads, bark)
