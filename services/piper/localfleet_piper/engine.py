"""Piper (piper-tts, ONNX Runtime) behind plain Python types: the only module that imports piper."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
from piper import PiperVoice, SynthesisConfig

from localfleet.speech import PIECE_CHARS, split_text

#: a run on more phoneme ids than this (about 120 characters: a pad follows each phoneme) hands the
#: memory it grew ONNX Runtime's arena by back to the system; shorter ones keep it for the next
SHRINK_ABOVE_IDS = 256
#: the most phonemes one run synthesizes (about 12 s of speech, what 200 English characters make):
#: a run's memory follows its audio, and a few characters can make many phonemes (espeak reads each CJK
#: character or emoji as words: 135 of them were 1,649 phonemes, 86 s, 1.9 GiB in one run)
RUN_PHONEMES = 256
#: the phoneme between words, where a long sentence is cut
WORD_BREAK = " "
#: the largest s16 sample Piper writes
FULL_SCALE = 32767.0


@dataclass(frozen=True)
class Tuning:
    """Synthesis knobs; None keeps the voice config's own value."""

    length_scale: float | None = None
    noise_scale: float | None = None
    noise_w_scale: float | None = None


@dataclass
class Voice:
    name: str
    path: Path
    sample_rate: int
    #: speaker names of a multi-speaker voice, with their ids
    speakers: dict[str, int]
    num_speakers: int
    nbytes: int
    #: the voice config's own length_scale, used when a Tuning leaves it unset
    length_scale: float
    _voice: PiperVoice

    def pcm(self, text: str, speaker_id: int | None, tuning: Tuning) -> Iterator[bytes]:
        """s16le mono PCM, one chunk per run of phonemes as it is synthesized.

        Piper's own `synthesize` runs a whole sentence at once, and a run's memory follows the audio it
        makes: here the text is phonemized a bounded piece at a time, and each sentence synthesized in
        runs of bounded phonemes, shorter for slower speech.
        """
        config = SynthesisConfig(
            speaker_id=speaker_id,
            length_scale=tuning.length_scale,
            noise_scale=tuning.noise_scale,
            noise_w_scale=tuning.noise_w_scale,
        )
        slower = tuning.length_scale if tuning.length_scale is not None else self.length_scale
        limit = max(1, int(RUN_PHONEMES / max(1.0, slower)))
        for piece in split_text(text, PIECE_CHARS):
            for sentence in self._voice.phonemize(piece):
                for run in bounded(sentence, limit):
                    ids = self._voice.phonemes_to_ids(run)
                    yield _int16(self._voice.phoneme_ids_to_audio(ids, config))


def _int16(audio: Any) -> bytes:
    """Piper's float audio as s16le, scaled to full range as its `synthesize` does (normalize_audio)."""
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    scaled = audio / peak if peak >= 1e-8 else np.zeros_like(audio)
    return bytes(np.clip(scaled * FULL_SCALE, -FULL_SCALE, FULL_SCALE).astype("<i2").tobytes())


class _Shrinking:
    """Piper's ONNX Runtime session, handing back after a long run what it grew the arena by.

    The arena otherwise keeps its high-water mark for good (+0.2 GiB after 200 characters). Shrinking
    after every run cost 13% more CPU time over a mix of sentences (each run faults its pages in
    again); after long runs only, nothing measurable.
    """

    def __init__(self, session: Any) -> None:
        self._session = session
        self._shrink = onnxruntime.RunOptions()
        self._shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def run(self, names: Sequence[str] | None, feeds: Mapping[str, Any], options: Any = None) -> Any:
        if options is None and feeds["input"].shape[-1] > SHRINK_ABOVE_IDS:
            options = self._shrink
        return self._session.run(names, feeds, options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


def bounded(phonemes: list[str], limit: int = RUN_PHONEMES) -> list[list[str]]:
    """A sentence's phonemes in runs of at most `limit`, each cut after its last word break if it has
    one; each run is synthesized (and normalized) as a sentence of its own."""
    runs: list[list[str]] = []
    while len(phonemes) > limit:
        head = phonemes[:limit]
        cut = len(head) - head[::-1].index(WORD_BREAK) if WORD_BREAK in head[1:] else limit
        runs.append(phonemes[:cut])
        phonemes = phonemes[cut:]
    return [*runs, phonemes] if phonemes else runs


def load(path: Path, config: Path, use_cuda: bool = False) -> Voice:
    voice = PiperVoice.load(path, config_path=config, use_cuda=use_cuda)
    voice.session = _Shrinking(voice.session)
    settings = voice.config
    return Voice(
        name=path.name.removesuffix(".onnx"),
        path=path,
        sample_rate=settings.sample_rate,
        speakers=dict(settings.speaker_id_map),
        num_speakers=settings.num_speakers,
        nbytes=path.stat().st_size,
        length_scale=settings.length_scale,
        _voice=voice,
    )
