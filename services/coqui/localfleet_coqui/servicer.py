"""coqui: text to speech with Coqui TTS models (coqui-tts on torch), TTS and TTSStream.

LoadModel takes a Coqui model folder (config.json and its checkpoint), or its config.json or checkpoint;
a relative name is looked up in the models dir. Nothing is downloaded. VITS and the other single-pass
models speak one sentence at a time; XTTS streams within a sentence (`inference_stream`). Requests
choose `voice`: one of the model's speakers, or, for a model that clones (XTTS, a model with a speaker
encoder), a reference recording's path; `language` where the model has several. Audio: 16-bit mono PCM
at the model's rate; see `localfleet.speech`.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from localfleet.backend import ModelRef, beside_model
from localfleet.errors import BadInput, NotFound, Refused
from localfleet.inputs import excerpt
from localfleet.proto import backend_pb2 as pb
from localfleet.speech import (
    SpeechBackend,
    SpeechOptions,
    SpeechRequest,
    Utterance,
    is_recording,
    require_model,
)

if TYPE_CHECKING:
    from localfleet_coqui.engine import Model

#: what LoadModel can name: a model folder, its config.json or its checkpoint
CHECKPOINT_SUFFIXES = (".pth", ".tar", ".pt")


class CoquiOptions(SpeechOptions):
    speaker: str | None = Field(None, description="speaker when a request names none; default the first")
    language: str | None = Field(None, description="language when a request names none; default the first")
    vocoder: str | None = Field(
        None, description="a Coqui vocoder folder (or its checkpoint) for models that output spectrograms"
    )
    seed: int | None = Field(
        None, description="seed torch before each request: the same text, the same audio"
    )
    device: str | None = Field(None, description="cpu, cuda, cuda:1, mps; default cuda when available")
    # XTTS only
    stream_chunk_size: int = Field(20, ge=1, le=400, description="XTTS: GPT steps between audio chunks")
    temperature: float | None = Field(None, gt=0, le=5, description="XTTS: sampling temperature")
    top_k: int | None = Field(None, ge=1, description="XTTS: sampling top-k")
    top_p: float | None = Field(None, gt=0, le=1, description="XTTS: sampling top-p")
    speed: float | None = Field(None, ge=0.25, le=4, description="XTTS: speaking speed")


class Coqui(SpeechBackend):
    name = "coqui"
    Options = CoquiOptions
    # torch uses every core for one synthesis: one request at a time, the rest queue in order.
    default_concurrency = 1

    def __init__(self) -> None:
        self._model: Model | None = None
        self._names: set[str] = set()
        self._speaker = ""
        self._language = ""
        self._seed: int | None = None
        #: LoadModel's AudioPath: the reference recording an XTTS request without a voice speaks with
        self._reference: Path | None = None
        self.clones_voices = False

    # -- lifecycle -----------------------------------------------------------------------------
    def refuse(self, model: ModelRef) -> str | None:
        path = model.local_path()
        if path.name.endswith(".onnx"):
            return f"{path.name} is an ONNX model; Coqui models are a folder with config.json and model.pth"
        if path.suffix.lower() in (".gguf", ".ggml", ".bin", ".safetensors"):
            return f"{path.name} is not a Coqui model: it serves a folder with config.json and its checkpoint"
        if _folder(path) is None:
            if model.is_remote_id():
                return (
                    f"{model.name!r} is not a folder here; this backend downloads nothing: put the Coqui "
                    "model folder (config.json, model.pth) in the models dir first"
                )
            if model.name.startswith("tts_models/"):
                return f"{model.name!r} is a Coqui model id; this backend downloads nothing: load its folder"
            return f"no Coqui model at {model.path!r}: it serves a folder with config.json and its checkpoint"
        return None

    def load(self, model: ModelRef, options: BaseModel, request: pb.ModelOptions) -> str:
        import torch

        from localfleet_coqui import engine

        assert isinstance(options, CoquiOptions)
        path = model.local_path()
        vocoder = _beside(options.vocoder, model.model_dir) if options.vocoder else None
        reference = (
            Path(beside_model(request.AudioPath, model.model_dir, "AudioPath")) if request.AudioPath else None
        )
        device = options.device or ("cuda" if torch.cuda.is_available() else "cpu")
        settings = {
            key: value
            for key, value in (
                ("temperature", options.temperature),
                ("top_k", options.top_k),
                ("top_p", options.top_p),
                ("speed", options.speed),
            )
            if value is not None
        }
        try:
            loaded = engine.load(
                path,
                device=device,
                vocoder=vocoder,
                xtts_settings=settings,
                stream_chunk_size=options.stream_chunk_size,
            )
        except engine.NotCoqui as err:
            raise Refused(str(err)) from err
        if settings and loaded.kind != "xtts":
            raise Refused(f"options {', '.join(settings)} are XTTS's; {loaded.name} is a {loaded.kind} model")
        speaker = options.speaker or (loaded.speakers[0] if loaded.speakers else "")
        if speaker and speaker not in loaded.speakers:
            raise Refused(f"option speaker={speaker!r} is not a speaker of {loaded.name}; {_has(loaded)}")
        language = options.language or (loaded.languages[0] if loaded.languages else "")
        if language and language not in loaded.languages:
            raise Refused(
                f"option language={language!r} is not a language of {loaded.name}; {_languages(loaded)}"
            )
        if reference is not None and not loaded.clones:
            raise Refused(
                f"AudioPath names a voice to clone, and {loaded.name} ({loaded.kind}) does not clone"
            )
        self._model, self._speaker, self._language = loaded, speaker, language
        self._seed, self._reference = options.seed, reference
        self.clones_voices = loaded.clones
        self.max_chars = options.max_chars
        self._names = {loaded.name, path.name}
        parts = [f"{loaded.name} ({loaded.kind}, {loaded.sample_rate} Hz"]
        if loaded.speakers:
            parts.append(f", {_count(len(loaded.speakers), 'speaker')}")
        if loaded.languages:
            parts.append(f", {_count(len(loaded.languages), 'language')}")
        if loaded.clones:
            parts.append(", clones voices")
        return "".join(parts) + f") on {device}"

    def unload(self) -> str:
        self._model = None
        self.clones_voices = False
        return "released the model"

    def memory(self) -> dict[str, int]:
        model = self._model
        return {"model": model.nbytes} if model else {}

    # -- one request ---------------------------------------------------------------------------
    def utterance(self, request: SpeechRequest) -> Utterance:
        from localfleet_coqui import engine

        model = self._model
        assert model is not None  # the runtime admits requests only with a model loaded
        require_model(request.model, self._names, model.name)
        language = request.language or self._language
        if language and language not in model.languages:
            if not model.languages:
                raise BadInput(
                    f"{model.name} speaks one language; send no language (got {excerpt(language)})"
                )
            raise NotFound(f"unknown language {excerpt(language)}; {_languages(model)}")
        voice: object = None
        speaker = ""
        reference = request.voice_file or (None if request.voice else self._reference)
        if reference is not None:
            try:
                voice = model.voice(reference)
            except engine.BadVoice as err:
                raise BadInput(str(err)) from err
            said = f"voice cloned from {reference.name}"
        elif request.voice and is_recording(request.voice):
            raise BadInput(
                f"voice {excerpt(request.voice)} is a recording, and {model.name} ({model.kind}) does not "
                f"clone voices; {_has(model)}"
            )
        else:
            speaker = request.voice or self._speaker
            if speaker and speaker not in model.speakers:
                raise NotFound(f"unknown voice {excerpt(speaker)}; {_has(model)}")
            if not speaker and model.kind == "xtts":
                raise BadInput(
                    f"{model.name} speaks with a cloned voice: send voice as a reference recording's path"
                )
            said = f"speaker {speaker}" if speaker else model.name
        speech = functools.partial(model.pcm, request.text, speaker, language, voice, self._seed)
        return Utterance(model.sample_rate, speech, said)


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _has(model: Model) -> str:
    if model.speakers:
        return f"it has speakers {', '.join(model.speakers)}"
    return "it has one voice (send no voice)"


def _languages(model: Model) -> str:
    return f"it speaks {', '.join(model.languages)}"


def _beside(path: str, model_dir: str) -> Path:
    """A path LoadModel's options name: relative to the models dir unless absolute."""
    return Path(path) if Path(path).is_absolute() or not model_dir else Path(model_dir) / path


def _folder(path: Path) -> Path | None:
    """The model folder that `path` names (the folder, its config.json or its checkpoint), if it has a
    config.json."""
    try:
        if path.is_dir():
            folder = path
        elif path.is_file() and (path.name == "config.json" or path.suffix.lower() in CHECKPOINT_SUFFIXES):
            folder = path.parent
        else:
            return None
        return folder if (folder / "config.json").is_file() else None
    except (OSError, ValueError):  # a name too long or with a NUL in it, a folder that cannot be read
        return None
