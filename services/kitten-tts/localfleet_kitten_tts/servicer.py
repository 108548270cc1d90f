"""kitten-tts: text to speech with the ONNX KittenTTS models (kittenml on ONNX Runtime), TTS and TTSStream.

LoadModel takes a KittenTTS model folder as its Hugging Face repository has it (config.json, the ONNX
model, voices.npz), or its config.json or ONNX file; a relative name is looked up in the models dir.
Nothing is downloaded. Requests choose `voice` (one of the model's voices or their aliases); KittenTTS
speaks English only. Audio: 16-bit mono PCM at 24 kHz, one chunk per sentence; see `localfleet.speech`.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from localfleet.backend import ModelRef
from localfleet.errors import BadInput, NotFound, Refused
from localfleet.inputs import excerpt
from localfleet.proto import backend_pb2 as pb
from localfleet.speech import SpeechBackend, SpeechOptions, SpeechRequest, Utterance, require_model

if TYPE_CHECKING:
    from localfleet_kitten_tts.engine import Model

#: the language KittenTTS speaks (kittenml phonemizes with espeak-ng en-us)
LANGUAGE = "en-us"


class KittenOptions(SpeechOptions):
    voice: str | None = Field(
        None, description="voice when a request names none; default expr-voice-5-m, else the first"
    )
    speed: float = Field(1.0, ge=0.5, le=2.0)
    clean_text: bool = Field(
        True, description="normalize the text first (numbers, currencies, abbreviations to words)"
    )


class KittenTts(SpeechBackend):
    name = "kitten-tts"
    Options = KittenOptions
    # Several times faster than real time on two CPU cores, and ONNX Runtime uses them all for one run:
    # one request at a time, the rest queue in order.
    default_concurrency = 1

    def __init__(self) -> None:
        self._model: Model | None = None
        self._names: set[str] = set()
        self._voice = ""
        self._speed = 1.0
        self._clean = True

    # -- lifecycle -----------------------------------------------------------------------------
    def refuse(self, model: ModelRef) -> str | None:
        path = model.local_path()
        if path.name.endswith(".onnx") and path.with_name(path.name + ".json").is_file():
            return f"{path.name} is a Piper voice (it has {path.name}.json); use the piper backend"
        folder = _folder(path)
        if folder is None:
            if model.is_remote_id():
                return (
                    f"{model.name!r} is not a folder here; this backend downloads nothing: fetch the "
                    f"repository into the models dir first (hf download {model.name} --local-dir ...)"
                )
            return (
                f"no KittenTTS model at {model.path!r}: it serves a model folder with config.json, "
                "the ONNX model and voices.npz (e.g. kitten-tts-nano-0.8 from Hugging Face)"
            )
        return None

    def load(self, model: ModelRef, options: BaseModel, request: pb.ModelOptions) -> str:
        from localfleet_kitten_tts import engine

        assert isinstance(options, KittenOptions)
        folder = _folder(model.local_path())
        if folder is None:
            raise Refused(f"no KittenTTS model folder at {model.path!r}")
        try:
            loaded = engine.load(folder)
        except engine.NotKitten as err:
            raise Refused(str(err)) from err
        if not loaded.voices:
            raise Refused(f"the voices file of {loaded.name} holds none of KittenTTS's voices")
        voice = options.voice or loaded.default_voice
        if voice not in loaded.voices:
            raise Refused(
                f"option voice={voice!r} is not a voice of {loaded.name}; it has {', '.join(loaded.voices)}"
            )
        self._model, self._voice, self._speed = loaded, voice, options.speed
        self._clean = options.clean_text
        self._names = {loaded.name, "config.json", *(p.name for p in folder.glob("*.onnx"))}
        self.max_chars = options.max_chars
        return f"{loaded.name} with {len(loaded.voices)} voices (default {voice})"

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
        require_model(request.model, self._names, model.name)
        voice = request.voice or self._voice
        if voice not in model.voices:
            raise NotFound(f"unknown voice {excerpt(voice)}; {model.name} has {', '.join(model.voices)}")
        if request.language:
            code = request.language.strip().lower().replace("_", "-")
            if code not in ("en", LANGUAGE):
                raise BadInput(
                    f"language {excerpt(request.language)} is not one KittenTTS speaks; it speaks {LANGUAGE}"
                )
        speech = functools.partial(model.pcm, request.text, voice, self._speed, self._clean)
        return Utterance(model.sample_rate, speech, f"voice {voice}")


def _folder(path: Path) -> Path | None:
    """The model folder that `path` names (the folder, its config.json or its ONNX file), if it has a
    config.json."""
    try:
        if path.is_dir():
            folder = path
        elif path.is_file() and (path.name == "config.json" or path.suffix == ".onnx"):
            folder = path.parent
        else:
            return None
        return folder if (folder / "config.json").is_file() else None
    except (OSError, ValueError):  # a name too long or with a NUL in it, a folder that cannot be read
        return None
