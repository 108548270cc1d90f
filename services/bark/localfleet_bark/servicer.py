"""bark: text to speech and sound with Bark (transformers' BarkModel): TTS, TTSStream, SoundGeneration.

LoadModel takes a Bark model folder as its Hugging Face repository has it (config.json, the weights,
generation_config.json, the tokenizer and, for voices, speaker_embeddings_path.json with its arrays),
or a hub id the hub cache holds. TTS requests choose `voice`, one of the model's voice presets
(`v2/en_speaker_6`, ...); `language` picks that language's first preset when no voice is named.
SoundGeneration makes non-speech audio from a prompt ("[music] ...", "[laughs]", sound descriptions),
one Bark generation cut at `duration`; `temperature` is the semantic and coarse stages' temperature and
`sample=false` decodes greedily. Every request is seeded (ModelOptions.Seed, or the option `seed`), so
the same request gives the same audio. Audio: 16-bit mono PCM at 24 kHz; see `localfleet.speech`.
"""

from __future__ import annotations

import difflib
import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from localfleet import hub
from localfleet.backend import ModelRef, folder_refusal
from localfleet.errors import BadInput, NotFound, Refused
from localfleet.inputs import excerpt
from localfleet.proto import backend_pb2 as pb
from localfleet.sound import SoundBackend, SoundOptions, SoundRequest
from localfleet.speech import SpeechBackend, SpeechRequest, Utterance

if TYPE_CHECKING:
    from localfleet_bark.engine import Model, Sampling

#: the languages Bark speaks (its voice presets are named after them: v2/de_speaker_3, ...)
LANGUAGES = ("en", "de", "es", "fr", "hi", "it", "ja", "ko", "pl", "pt", "ru", "tr", "zh")
#: the voice when neither request nor option names one and the model has it (Bark's documented example)
DEFAULT_PRESET = "v2/en_speaker_6"
#: how many voice presets an error message lists (Bark has 130)
LISTED = 10


class BarkOptions(SoundOptions):
    voice: str | None = Field(
        None, description=f"voice preset when a request names none; default {DEFAULT_PRESET}, else the first"
    )
    device: str | None = Field(None, description="cpu, cuda, cuda:1, mps; default cuda when available")
    temperature: float | None = Field(
        None, gt=0, le=5, description="semantic and coarse temperature of speech; default the model's"
    )
    seed: int | None = Field(
        None, description="seed of every request; default ModelOptions.Seed, -1 for unseeded runs"
    )


class Bark(SoundBackend, SpeechBackend):
    name = "bark"
    Options = BarkOptions
    # One generation keeps the CPU cores (or the GPU) busy, and Bark samples from torch's global
    # generator, which a seeded request resets: one request at a time, the rest queue in order.
    default_concurrency = 1

    def __init__(self) -> None:
        self._model: Model | None = None
        self._voice: str | None = None
        self._options = BarkOptions()
        self._seed: int | None = None
        self._names: set[str] = set()

    # -- lifecycle -----------------------------------------------------------------------------
    def refuse(self, model: ModelRef) -> str | None:
        reason = folder_refusal(model, "a Bark model")
        if reason is not None:
            return reason
        path = Path(model.path)
        if path.is_dir():
            kind = _model_type(path)
            return None if kind == "bark" else f"{model.path!r} is {kind}, not Bark"
        return hub.refusal(model.path)

    def load(self, model: ModelRef, options: BaseModel, request: pb.ModelOptions) -> str:
        from localfleet_bark import engine  # torch: imported with the first model

        assert isinstance(options, BarkOptions)
        loaded = engine.load(
            engine.LoadSpec(model.path, options.device or "", request.DType, request.Threads)
        )
        voice = options.voice
        if voice is not None and voice not in loaded.presets:
            raise Refused(f"option voice={voice!r} is not a voice preset of {loaded.name}; {_listed(loaded)}")
        if voice is None and loaded.presets:
            voice = DEFAULT_PRESET if DEFAULT_PRESET in loaded.presets else next(iter(loaded.presets))
        seed = options.seed if options.seed is not None else request.Seed
        self._model, self._voice, self._options = loaded, voice, options
        self._seed = None if seed < 0 else seed
        self._names = {model.name, loaded.name}
        self.max_chars = options.max_chars
        self.load_sound_options(options)
        # An unset duration is the option's, within what one generation makes.
        self.default_seconds = min(options.default_seconds, loaded.max_seconds)
        voices = f"{len(loaded.presets)} voice presets (default {voice})" if voice else "no voice presets"
        return f"Bark {loaded.name} on {loaded.device}, {voices}, sounds of up to {loaded.max_seconds:.1f} s"

    def unload(self) -> str:
        self._model = None
        return "released the model"

    def memory(self) -> dict[str, int]:
        model = self._model
        return {"weights": model.nbytes} if model else {}

    def _loaded(self) -> Model:
        model = self._model
        assert model is not None  # the runtime admits requests only with a model loaded
        return model

    def _sampling(self, temperature: float | None, sample: bool | None) -> Sampling:
        from localfleet_bark.engine import Sampling

        return Sampling(temperature, True if sample is None else sample, self._seed)

    # -- one request ---------------------------------------------------------------------------
    def utterance(self, request: SpeechRequest) -> Utterance:
        model = self._loaded()
        self._check_model(request.model, model)
        voice = request.voice or None
        if request.language:
            code = request.language.strip().lower().replace("_", "-").split("-")[0]
            if code not in LANGUAGES:
                raise BadInput(
                    f"language {excerpt(request.language)} is not one Bark speaks; it speaks "
                    f"{', '.join(LANGUAGES)}"
                )
            if voice is None and not _speaks(self._voice, code):
                voice = _first_of(model, code)
        voice = voice or self._voice
        if voice is not None and voice not in model.presets:
            raise NotFound(f"unknown voice {excerpt(voice)}; {_listed(model, voice)}")
        sampling = self._sampling(self._options.temperature, None)
        speech = functools.partial(model.speech, request.text, voice, sampling, request.stop)
        return Utterance(model.sample_rate, speech, f"voice {voice}" if voice else "no voice preset")

    def sound(self, request: SoundRequest) -> Utterance:
        model = self._loaded()
        if request.src is not None:
            raise BadInput("src is set, but Bark cannot continue audio; leave it unset")
        if request.seconds > model.max_seconds + 1e-6:
            raise BadInput(
                f"duration {request.seconds:g} s is over the {model.max_seconds:.2f} s that Bark makes in "
                f"one generation ({model.max_tokens} semantic tokens); ask for less"
            )
        model.check_prompt(request.text)
        sampling = self._sampling(request.temperature, request.sample)
        sound = functools.partial(model.sound, request.text, request.seconds, sampling, request.stop)
        return Utterance(model.sample_rate, sound, f"Bark {model.name}")

    def _check_model(self, asked: str, model: Model) -> None:
        # Core's form of the loaded model's name is its models dir joined with it.
        names = self._names
        if asked and asked not in names and not any(asked.endswith("/" + name) for name in names):
            raise NotFound(
                f"model {excerpt(asked)} is not loaded here ({model.name} is); call LoadModel for it"
            )


def _model_type(folder: Path) -> str:
    """config.json's model_type, for a fast refusal of a folder of another kind."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return f"a folder whose config.json cannot be read ({err})"
    kind = config.get("model_type") if isinstance(config, dict) else None
    return "bark" if kind == "bark" else f"a {kind or 'untyped'} model"


def _speaks(preset: str | None, language: str) -> bool:
    """Whether a preset's name says it speaks `language` (v2/de_speaker_3: de)."""
    return preset is not None and preset.rsplit("/", 1)[-1].startswith(f"{language}_")


def _first_of(model: Model, language: str) -> str | None:
    return next((name for name in model.presets if _speaks(name, language)), None)


def _listed(model: Model, near: str = "") -> str:
    """The model's voice presets for a message: those close to `near` first, at most LISTED of them."""
    if not model.presets:
        return f"{model.name} has no voice presets (no speaker_embeddings_path.json); leave voice unset"
    names = list(model.presets)
    close = difflib.get_close_matches(near, names, n=3, cutoff=0.6) if near else []
    shown = [*close, *(n for n in names if n not in close)][:LISTED]
    more = f" and {len(names) - len(shown)} more" if len(names) > len(shown) else ""
    return f"{model.name} has {', '.join(shown)}{more}"
