"""chatterbox: Resemble AI's Chatterbox text to speech (chatterbox-tts on torch), TTS and TTSStream.

LoadModel takes a Chatterbox checkpoint folder as its Hugging Face repository has it (ve, t3_cfg and s3gen
safetensors, tokenizer.json, conds.pt for the built-in voice); a relative name is looked up in the models
dir. Nothing is downloaded. A request's `voice` is empty (the built-in voice, or the recording LoadModel's
AudioPath names) or a reference recording to clone (a path under the path roots, any format FFmpeg reads). The
expressiveness options (exaggeration, cfg_weight, temperature, ...) are LoadModel options: TTSRequest has
no field for them. English only. Audio: 16-bit mono PCM at 24 kHz, one chunk per sentence, watermarked
(Perth) as upstream does; see `localfleet.speech`.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from localfleet.backend import ModelRef, beside_model
from localfleet.errors import BadInput, NotFound, Refused
from localfleet.inputs import excerpt
from localfleet.proto import backend_pb2 as pb
from localfleet.speech import SpeechBackend, SpeechOptions, SpeechRequest, Utterance, require_model

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from localfleet_chatterbox.engine import Model, Settings, Voice

#: the language the English checkpoint speaks
LANGUAGE = "en"
#: the marker files of a checkpoint folder (engine.FILES, without importing torch)
FILES = ("ve.safetensors", "t3_cfg.safetensors", "s3gen.safetensors", "tokenizer.json")
#: the built-in voice's conditionals, beside them
BUILTIN = "conds.pt"
#: reference voices kept computed (a few seconds of work each), most recently used last
VOICES_KEPT = 8
#: a reference shorter than this gives the voice encoder nothing to hear
MIN_REFERENCE_SECONDS = 1.0


class ChatterboxOptions(SpeechOptions):
    exaggeration: float = Field(0.5, ge=0.0, le=2.0, description="emotion intensity; 0.5 is neutral")
    cfg_weight: float = Field(
        0.5, ge=0.0, le=1.0, description="classifier-free guidance: lower is slower, more deliberate"
    )
    temperature: float = Field(0.8, ge=0.05, le=5.0)
    repetition_penalty: float = Field(1.2, ge=1.0, le=2.0)
    min_p: float = Field(0.05, ge=0.0, le=1.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_speech_tokens: int = Field(
        1000, ge=1, le=4096, description="the most speech tokens (25 a second) one sentence may take"
    )
    flow_steps: int = Field(10, ge=1, le=100, description="flow-matching steps of the vocoder")
    seed: int | None = Field(
        None, ge=0, description="seed each request with it: the same text, the same audio"
    )


class Chatterbox(SpeechBackend):
    name = "chatterbox"
    Options = ChatterboxOptions
    # One request fills every core (or the GPU): the rest queue in order. Seeding needs it too.
    default_concurrency = 1
    clones_voices = True

    def __init__(self) -> None:
        self._model: Model | None = None
        self._settings: Settings | None = None
        self._default: Voice | None = None
        self._names: set[str] = set()
        self._voices: OrderedDict[tuple[str, int, int], Voice] = OrderedDict()

    # -- lifecycle -----------------------------------------------------------------------------
    def refuse(self, model: ModelRef) -> str | None:
        folder = _folder(model.local_path())
        if folder is not None:
            return None
        if model.is_remote_id():
            return (
                f"{model.name!r} is not a folder here; this backend downloads nothing: fetch the "
                f"repository into the models dir first (hf download {model.name} --local-dir ...)"
            )
        return (
            f"no Chatterbox checkpoint at {model.path!r}: it serves a folder with {', '.join(FILES)} "
            "(e.g. ResembleAI/chatterbox from Hugging Face)"
        )

    def load(self, model: ModelRef, options: BaseModel, request: pb.ModelOptions) -> str:
        assert isinstance(options, ChatterboxOptions)
        folder = _folder(model.local_path())
        if folder is None:
            raise Refused(f"no Chatterbox checkpoint folder at {model.path!r}")
        # AudioPath (core's audio_path): the reference recording a request without a voice speaks with.
        reference = (
            Path(beside_model(request.AudioPath, model.model_dir, "AudioPath")) if request.AudioPath else None
        )
        if reference is None and not (folder / BUILTIN).is_file():
            raise Refused(
                f"{folder.name} has no built-in voice ({BUILTIN}): name a reference recording in AudioPath "
                "(audio_path in the model's config)"
            )
        from localfleet import audio

        with warnings.catch_warnings():  # resemble-perth's import warns that pkg_resources is deprecated
            warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)
            from localfleet_chatterbox import engine
        try:
            loaded = engine.load(folder, threads=request.Threads)
        except engine.NotChatterbox as err:
            raise Refused(str(err)) from err
        default = loaded.builtin
        if reference is not None:
            default = loaded.voice(_reference(audio.decode(reference, "AudioPath", engine.SAMPLE_RATE)))
        assert default is not None  # conds.pt is there (checked above) and from_local loaded it
        self._settings = engine.Settings(
            exaggeration=options.exaggeration,
            cfg_weight=options.cfg_weight,
            temperature=options.temperature,
            repetition_penalty=options.repetition_penalty,
            min_p=options.min_p,
            top_p=options.top_p,
            max_speech_tokens=options.max_speech_tokens,
            flow_steps=options.flow_steps,
            seed=options.seed,
        )
        self._model, self._default = loaded, default
        self._names = {loaded.name, *FILES}
        self._voices.clear()
        self.max_chars = options.max_chars
        voice = f"voice {reference.name}" if reference else "its built-in voice"
        return f"{loaded.name} on {loaded.device} with {voice}"

    def unload(self) -> str:
        self._model = self._default = None
        self._voices.clear()
        return "released the model"

    def memory(self) -> dict[str, int]:
        model = self._model
        return {"model": model.nbytes} if model else {}

    # -- one request ---------------------------------------------------------------------------
    def utterance(self, request: SpeechRequest) -> Utterance:
        model, settings, default = self._model, self._settings, self._default
        # The runtime admits requests only with a model loaded.
        assert model is not None
        assert settings is not None
        assert default is not None
        require_model(request.model, self._names, model.name)
        if request.language:
            code = request.language.strip().lower().replace("_", "-")
            if code.split("-")[0] != LANGUAGE:
                raise BadInput(
                    f"language {excerpt(request.language)} is not one this Chatterbox speaks; it speaks "
                    "English (en)"
                )
        if request.voice_file is not None:
            voice, speaker = self._cloned(model, request.voice_file), f"voice of {request.voice_file.name}"
        elif request.voice in ("", "default"):
            voice, speaker = default, "default voice"
        else:
            raise NotFound(
                f"unknown voice {excerpt(request.voice)}; Chatterbox speaks its default voice (send no "
                "voice) or clones a reference recording (send its path, e.g. /voices/alice.wav)"
            )
        speech = functools.partial(model.pcm, request.text, voice, settings)
        return Utterance(model.sample_rate, speech, speaker)

    def _cloned(self, model: Model, path: Path) -> Voice:
        """The voice of a reference recording, computed once per file version."""
        from localfleet import audio
        from localfleet_chatterbox import engine

        stat = os.stat(path)
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        voice = self._voices.get(key)
        if voice is None:
            voice = model.voice(_reference(audio.decode(path, "voice", engine.SAMPLE_RATE)))
            self._voices[key] = voice
            while len(self._voices) > VOICES_KEPT:
                self._voices.popitem(last=False)
        self._voices.move_to_end(key)
        return voice


def _reference(samples: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """A decoded reference, refused when too short to hear a voice in."""
    from localfleet_chatterbox import engine

    seconds = len(samples) / engine.SAMPLE_RATE
    if seconds < MIN_REFERENCE_SECONDS:
        raise BadInput(
            f"the reference recording is {seconds:.2f} s long; Chatterbox needs at least "
            f"{MIN_REFERENCE_SECONDS:.0f} s of speech (5-10 s clone best)"
        )
    return samples


def _folder(path: Path) -> Path | None:
    """The checkpoint folder `path` names (the folder or one of its files), if it has the four files."""
    try:
        folder = path if path.is_dir() else path.parent if path.is_file() else None
        if folder is None or not all((folder / name).is_file() for name in FILES):
            return None
        return folder
    except (OSError, ValueError):  # a name too long or with a NUL in it, a folder that cannot be read
        return None
