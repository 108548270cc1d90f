"""silero-vad: voice activity detection (the VAD RPC) with Silero's ONNX model, torch-free.

`audio` is mono float32 in [-1, 1] at 16 kHz; segments come back in seconds, and a segment still open
at the end of the audio has `end = 0` (LocalAI core's convention). Threshold, minimum silence and speech
padding are LoadModel options with LocalAI's defaults.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from localfleet.backend import Backend, ModelRef
from localfleet.call import Call
from localfleet.errors import BadInput, NotLoaded, Refused
from localfleet.options import BackendOptions
from localfleet.proto import backend_pb2 as pb

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np

    from localfleet_silero_vad.engine import Detector

MIN_SAMPLES = 512
#: names that mean "Silero VAD" without a file: the model faster-whisper ships (silero_vad_v6.onnx)
NAMES = frozenset({"silero-vad", "silero_vad", "silero-vad.onnx", "silero_vad.onnx"})


class VADOptions(BackendOptions):
    threshold: float = Field(0.5, gt=0.15, lt=1, description="speech probability that starts speech")
    min_silence_ms: float = Field(100, ge=0, description="silence that ends a segment")
    speech_pad_ms: float = Field(30, ge=0, description="added before each start and after each end")


class SileroVAD(Backend):
    name = "silero-vad"
    Options = VADOptions
    # A request is a few milliseconds of one core (one ONNX thread each): two cores, two at once.
    default_concurrency = 2

    def __init__(self) -> None:
        self._detector: Detector | None = None
        self._options = VADOptions()

    def refuse(self, model: ModelRef) -> str | None:
        if os.path.isfile(model.path) and model.path.endswith(".onnx"):
            return None
        if Path(model.name).name.lower() in NAMES:
            return None
        return "it serves Silero VAD: an .onnx file of it, or the name silero-vad for the bundled one"

    def load(self, model: ModelRef, options: BaseModel, request: pb.ModelOptions) -> str:
        from localfleet_silero_vad.engine import Detector

        assert isinstance(options, VADOptions)
        path = model.path if os.path.isfile(model.path) else _bundled()
        self._detector = Detector(path)
        self._options = options
        return (
            f"Silero VAD ({self._detector.kind} ONNX) from {path}: threshold {options.threshold}, "
            f"min silence {options.min_silence_ms:g} ms, padding {options.speech_pad_ms:g} ms"
        )

    def unload(self) -> str:
        self._detector = None
        return "model released"

    async def VAD(self, request: pb.VADRequest, call: Call) -> pb.VADResponse:
        if len(request.audio) < MIN_SAMPLES:
            raise BadInput(
                f"VAD audio has {len(request.audio)} samples; at least {MIN_SAMPLES} (32 ms at 16 kHz) "
                "are needed"
            )
        segments = await call.run(self._detect, request.audio, call.raise_if_stopped)
        return pb.VADResponse(segments=[pb.VADSegment(start=s, end=e) for s, e in segments])

    def _detect(self, samples: object, check: Callable[[], None]) -> list[tuple[float, float]]:
        import numpy as np

        from localfleet_silero_vad.engine import speech_segments

        detector = self._detector
        if detector is None:
            raise NotLoaded()
        audio: np.ndarray = np.asarray(samples, dtype=np.float32)
        _check_pcm(audio)
        audio = np.clip(audio, -1.0, 1.0)
        options = self._options
        probs = detector.probabilities(audio, check)
        return speech_segments(
            probs, len(audio), options.threshold, options.min_silence_ms, options.speech_pad_ms
        )


def _check_pcm(audio: np.ndarray) -> None:
    import numpy as np

    if not np.isfinite(audio).all():
        raise BadInput("VAD audio holds NaN or infinite samples; send float32 PCM in [-1, 1]")
    peak = float(np.abs(audio).max())
    if peak > 2:  # not PCM in [-1, 1] (a little overshoot from resampling is clipped below)
        raise BadInput(
            f"VAD audio peaks at {peak:g}, outside [-1, 1]: send float32 PCM scaled to [-1, 1] (divide "
            "16-bit samples by 32768), mono at 16 kHz"
        )


def _bundled() -> str:
    spec = importlib.util.find_spec("faster_whisper")  # its folder, without importing CTranslate2
    if spec is None or not spec.submodule_search_locations:
        raise Refused("no bundled Silero model: pip install faster-whisper, or load a silero_vad.onnx file")
    path = Path(next(iter(spec.submodule_search_locations))) / "assets" / "silero_vad_v6.onnx"
    if not path.is_file():
        raise Refused(f"faster-whisper's Silero model is missing ({path}); load a silero_vad.onnx file")
    return str(path)
