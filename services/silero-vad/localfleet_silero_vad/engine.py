"""Silero VAD on ONNX Runtime (no torch): the only module that imports onnxruntime. Plain types in and out.

Two ONNX signatures exist and both load: the sequence model (inputs `input`, `h`, `c`: many windows in
one run, as faster-whisper ships it) and the streaming model (inputs `input`, `state`, optionally `sr`:
one window a run, as Silero and LocalAI's gallery ship `silero_vad.onnx`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnxruntime

from localfleet.audio import SAMPLE_RATE
from localfleet.errors import Refused

RATE = SAMPLE_RATE
WINDOW = 512  # samples a probability covers at 16 kHz
CONTEXT = 64  # samples of the previous window the model sees with each one
_BATCH = 10_000  # windows per run of the sequence model


class Detector:
    def __init__(self, path: str) -> None:
        options = onnxruntime.SessionOptions()
        # One thread a session: VAD runs are short, and concurrent requests then use separate cores.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = onnxruntime.InferenceSession(
                path, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise Refused(f"{path!r} is not an ONNX model ONNX Runtime can load: {exc}") from None
        inputs = {i.name for i in self.session.get_inputs()}
        self._probabilities: Callable[[np.ndarray, Callable[[], None]], np.ndarray]
        if {"input", "h", "c"} <= inputs:
            self.kind = "sequence"
            self._probabilities = self._sequence
        elif {"input", "state"} <= inputs:
            self.kind = "streaming"
            self._with_rate = "sr" in inputs
            self._probabilities = self._streaming
        else:
            raise Refused(
                f"{path!r} has inputs {sorted(inputs)}, not Silero VAD's (input+h+c or input+state[+sr])"
            )

    def probabilities(self, audio: np.ndarray, check: Callable[[], None]) -> np.ndarray:
        """Speech probability of each whole 512-sample window (a trailing part-window is not judged)."""
        return self._probabilities(_windows(audio), check)

    def _sequence(self, windows: np.ndarray, check: Callable[[], None]) -> np.ndarray:
        h = np.zeros((1, 1, 128), dtype=np.float32)
        c = np.zeros((1, 1, 128), dtype=np.float32)
        out = []
        for first in range(0, len(windows), _BATCH):
            check()
            probs, h, c = self.session.run(None, {"input": windows[first : first + _BATCH], "h": h, "c": c})
            out.append(np.asarray(probs, dtype=np.float32).reshape(-1))
        return np.concatenate(out)

    def _streaming(self, windows: np.ndarray, check: Callable[[], None]) -> np.ndarray:
        state = np.zeros((2, 1, 128), dtype=np.float32)
        feeds: dict[str, np.ndarray] = {}
        if self._with_rate:
            feeds["sr"] = np.array(RATE, dtype=np.int64)
        probs = np.empty(len(windows), dtype=np.float32)
        for index, window in enumerate(windows):
            if index % 256 == 0:
                check()
            output, state = self.session.run(None, {**feeds, "input": window[None, :], "state": state})
            probs[index] = float(np.asarray(output).reshape(-1)[0])
        return probs


def speech_segments(
    probs: np.ndarray, samples: int, threshold: float, min_silence_ms: float, pad_ms: float
) -> list[tuple[float, float]]:
    """(start, end) in seconds; a segment still open at the end of the audio has end 0.

    Speech starts at the first window at or above `threshold`; it ends once the probability has stayed
    below `threshold - 0.15` for `min_silence_ms`. Starts move `pad_ms` earlier and ends `pad_ms` later.
    """
    low = threshold - 0.15
    min_silence = min_silence_ms * RATE / 1000
    pad = pad_ms * RATE / 1000
    segments: list[tuple[float, float]] = []
    start: float | None = None
    quiet_from: int | None = None
    for index, p in enumerate(probs.tolist()):
        at = index * WINDOW
        if p >= threshold:
            quiet_from = None
            if start is None:
                start = max(0.0, at - pad)
        elif p < low and start is not None:
            if quiet_from is None:
                quiet_from = at
            if at + WINDOW - quiet_from >= min_silence:
                segments.append((start / RATE, min(samples, quiet_from + pad) / RATE))
                start, quiet_from = None, None
    if start is not None:
        segments.append((start / RATE, 0.0))
    return segments


def _windows(audio: np.ndarray) -> np.ndarray:
    """(n, 576): each 512-sample window with the 64 samples before it (zeros before the first)."""
    n = len(audio) // WINDOW
    frames = np.ascontiguousarray(audio[: n * WINDOW], dtype=np.float32).reshape(n, WINDOW)
    context = np.zeros((n, CONTEXT), dtype=np.float32)
    context[1:] = frames[:-1, -CONTEXT:]
    return np.concatenate([context, frames], axis=1)
