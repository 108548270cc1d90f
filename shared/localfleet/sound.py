"""Sound generation (music, effects, speech from a prompt) for every backend that serves SoundGeneration.

A backend subclasses `SoundBackend` (beside its other bases) and implements `sound()`: turn a checked
`SoundRequest` into an `Utterance` (a sample rate and a generator of PCM chunks), or raise `BadInput`
naming what the model cannot do. This module owns the rest, the same for every engine:

- `text` (or `caption`) is the prompt; whitespace only is refused unless `src` gives audio to continue.
- `duration` is seconds, finite, above 0 and at most the LoadModel option `max_seconds`; unset means the
  option `default_seconds`. `temperature` is finite and above 0.
- `src` is a readable audio file inside the path roots, decoded by `localfleet.audio.decode` at the
  model's rate when the engine asks for it (`SoundRequest.source`).
- The music fields (`lyrics`, `bpm`, `keyscale`, `timesignature`, `instrumental`, `language`, `think`,
  `src_divisor`) reach a model that declares them in `sound_fields`; set for a model that does not,
  the request is refused by field name rather than silently ignored.
- The WAV goes to `dst` through `speech.write_wav` (`files.replacing`): `success=true` means a complete
  file on disk; a failure or a cancel leaves none.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field

from localfleet.backend import Backend
from localfleet.call import Call
from localfleet.errors import BadInput
from localfleet.inputs import excerpt
from localfleet.options import BackendOptions
from localfleet.paths import WAV
from localfleet.proto import backend_pb2 as pb
from localfleet.speech import MAX_CHARS, Utterance, require_text, write_wav

if TYPE_CHECKING:
    import numpy as np

#: the longest sound one request may ask for unless the LoadModel option max_seconds says otherwise
MAX_SECONDS = 120.0
#: what an unset duration means unless the LoadModel option default_seconds says otherwise
DEFAULT_SECONDS = 10.0
#: the optional fields of SoundGenerationRequest that only some models use
MUSIC_FIELDS = (
    "lyrics",
    "bpm",
    "keyscale",
    "timesignature",
    "instrumental",
    "language",
    "think",
    "src_divisor",
)


class SoundOptions(BackendOptions):
    """LoadModel options of every backend that serves SoundGeneration."""

    max_seconds: float = Field(
        MAX_SECONDS, gt=0, le=3600, description="the longest sound a request may ask for"
    )
    default_seconds: float = Field(
        DEFAULT_SECONDS, gt=0, le=3600, description="the length of a request without duration"
    )
    max_chars: int = Field(MAX_CHARS, ge=1, description="the most characters of text one request may send")


@dataclass(frozen=True)
class SoundRequest:
    """A checked SoundGenerationRequest, as plain values."""

    text: str
    seconds: float
    #: whether `duration` was set by the caller (else `seconds` is the default)
    asked_seconds: bool
    temperature: float | None = None
    sample: bool | None = None
    #: `src`, checked against the path roots; `source(rate)` decodes it
    src: Path | None = None
    #: the music fields that were set, by name (only those in the backend's `sound_fields`)
    music: dict[str, str | int | bool] = field(default_factory=dict)
    #: the call's stop flag, for engines whose single steps run long enough to check it inside them
    stop: threading.Event | None = None
    #: the call's `progress(done, total)`: a step of a long generation to the log and the metrics (and a
    #: stop there once the call has stopped), for engines that make all the audio before its first chunk
    progress: Callable[[int, int], None] | None = None

    def source(self, rate: int) -> np.ndarray | None:
        """`src` as mono float32 at `rate` (blocking), or None without one."""
        from localfleet import audio

        return None if self.src is None else audio.decode(self.src, "src", rate)


class SoundBackend(Backend):
    """Base of the backends that serve SoundGeneration over `sound()`."""

    #: the music fields (of MUSIC_FIELDS) the loaded model uses; others set in a request are refused
    sound_fields: frozenset[str] = frozenset()
    #: what `load()` sets from SoundOptions
    max_seconds = MAX_SECONDS
    default_seconds = DEFAULT_SECONDS
    sound_chars = MAX_CHARS

    def sound(self, request: SoundRequest) -> Utterance:
        """Prepare one generation (blocking, in a worker thread); the PCM is made as it is read."""
        raise NotImplementedError

    def sound_refusal(self) -> str | None:
        """Why the loaded model cannot make sounds at all (e.g. a speech-only model), or None."""
        return None

    async def SoundGeneration(self, request: pb.SoundGenerationRequest, call: Call) -> pb.Result:
        refusal = self.sound_refusal()
        if refusal:
            raise BadInput(refusal)
        asked = await self._checked(request, call)
        dst = await call.run(call.paths.writable, request.dst, "dst", WAV)
        utterance = await call.run(self.sound, asked)
        written = await call.run(
            write_wav, dst, utterance, call.raise_if_stopped, "the model produced no audio"
        )
        return pb.Result(
            success=True,
            message=f"wrote {written.seconds:.2f} s of {written.sample_rate} Hz audio ({utterance.speaker}) "
            f"to {written.path}",
        )

    async def _checked(self, request: pb.SoundGenerationRequest, call: Call) -> SoundRequest:
        text = request.text if request.text.strip() else request.caption
        src = None
        if request.HasField("src") and request.src.strip():
            src = await call.run(call.paths.readable, request.src, "src")
            if text.strip():
                require_text(text, self.sound_chars)
        else:
            text = require_text(text, self.sound_chars)
        if request.HasField("duration"):
            seconds = _positive(request.duration, "duration", "seconds of sound")
            if seconds > self.max_seconds:
                raise BadInput(
                    f"duration {seconds:g} s is over this model's limit of {self.max_seconds:g} s: ask for "
                    "less, or raise the LoadModel option max_seconds"
                )
        else:
            seconds = self.default_seconds
        temperature = (
            _positive(request.temperature, "temperature") if request.HasField("temperature") else None
        )
        music: dict[str, str | int | bool] = {}
        for name in MUSIC_FIELDS:
            if not request.HasField(name):
                continue
            if name not in self.sound_fields:
                uses = ", ".join(sorted(self.sound_fields)) or "none of them"
                raise BadInput(
                    f"{name} is set, but this model does not use it (of the music fields it uses {uses}); "
                    "leave it unset"
                )
            value: str | int | bool = getattr(request, name)
            if isinstance(value, str):
                value = value.strip()
                if len(value) > self.sound_chars:
                    raise BadInput(f"{name} {excerpt(value, 40)} is over {self.sound_chars} characters")
            music[name] = value
        return SoundRequest(
            text.strip(),
            seconds,
            request.HasField("duration"),
            temperature,
            request.sample if request.HasField("sample") else None,
            src,
            music,
            call.stop,
            call.progress,
        )

    def load_sound_options(self, options: SoundOptions) -> None:
        """Take the limits of a load's options (call from `load()`)."""
        self.max_seconds, self.default_seconds = options.max_seconds, options.default_seconds
        self.sound_chars = options.max_chars


def _positive(value: float, name: str, unit: str = "") -> float:
    if not math.isfinite(value) or value <= 0:
        raise BadInput(
            f"{name} is {value:g}; send a number above 0{' (' + unit + ')' if unit else ''}, "
            "or leave it unset"
        )
    return float(value)
