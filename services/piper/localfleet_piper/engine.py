"""Piper (piper-tts, ONNX Runtime) behind plain Python types: the only module that imports piper."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnxruntime
from piper import PiperVoice, SynthesisConfig

from localfleet.speech import PIECE_CHARS, split_text

#: a run on more phoneme ids than this (about 120 characters: a pad follows each phoneme) hands the
#: memory it grew ONNX Runtime's arena by back to the system; shorter ones keep it for the next
SHRINK_ABOVE_IDS = 256


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
        """s16le mono PCM, one chunk per sentence as it is synthesized.

        The text goes to Piper a bounded piece at a time: one run's memory grows with its length.
        """
        config = SynthesisConfig(
            speaker_id=speaker_id,
            length_scale=tuning.length_scale,
            noise_scale=tuning.noise_scale,
            noise_w_scale=tuning.noise_w_scale,
        )
        for piece in split_text(text, self.piece_chars(tuning)):
            for chunk in self._voice.synthesize(piece, syn_config=config):
                yield chunk.audio_int16_bytes

    def piece_chars(self, tuning: Tuning) -> int:
        """Shorter pieces for slower speech: a run's memory grows with the audio it makes."""
        slower = tuning.length_scale if tuning.length_scale is not None else self.length_scale
        return max(1, int(PIECE_CHARS / max(1.0, slower)))


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
