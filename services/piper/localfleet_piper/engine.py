"""Piper (piper-tts, ONNX Runtime) behind plain Python types: the only module that imports piper."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from piper import PiperVoice, SynthesisConfig


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
    _voice: PiperVoice

    def pcm(self, text: str, speaker_id: int | None, tuning: Tuning) -> Iterator[bytes]:
        """s16le mono PCM, one chunk per sentence as it is synthesized."""
        config = SynthesisConfig(
            speaker_id=speaker_id,
            length_scale=tuning.length_scale,
            noise_scale=tuning.noise_scale,
            noise_w_scale=tuning.noise_w_scale,
        )
        for chunk in self._voice.synthesize(text, syn_config=config):
            yield chunk.audio_int16_bytes


def load(path: Path, config: Path, use_cuda: bool = False) -> Voice:
    voice = PiperVoice.load(path, config_path=config, use_cuda=use_cuda)
    settings = voice.config
    return Voice(
        name=path.name.removesuffix(".onnx"),
        path=path,
        sample_rate=settings.sample_rate,
        speakers=dict(settings.speaker_id_map),
        num_speakers=settings.num_speakers,
        nbytes=path.stat().st_size,
        _voice=voice,
    )
