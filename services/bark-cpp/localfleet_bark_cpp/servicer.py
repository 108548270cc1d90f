"""bark-cpp: text to speech with Bark on bark.cpp (GGML, through bark-cpp-python): TTS and TTSStream.

LoadModel takes one bark.cpp model file (`ggml_weights.bin` as bark.cpp's convert.py writes it, f16 or
quantized with its quantize); a relative name is looked up in the models dir. Nothing is downloaded.
The file's layout is checked whole before bark.cpp reads it (`modelfile`): bark.cpp itself trusts every
header, and a codec in f32 would abort the process at the first request. bark.cpp has no voice presets,
so a request names no voice; `language` is checked against the languages Bark speaks (Bark reads the
language from the text itself). Audio: 16-bit mono PCM at the codec's rate (24 kHz), one chunk per
sentence; see `localfleet.speech`.
"""

from __future__ import annotations

import functools
import secrets
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from localfleet.backend import ModelRef
from localfleet.cpus import cap_threads, usable
from localfleet.errors import BadInput, NotFound, Refused
from localfleet.inputs import excerpt
from localfleet.proto import backend_pb2 as pb
from localfleet.speech import SpeechBackend, SpeechOptions, SpeechRequest, Utterance, require_model
from localfleet_bark_cpp import modelfile

if TYPE_CHECKING:
    from localfleet_bark_cpp.engine import Model

#: the languages Bark speaks
LANGUAGES = ("en", "de", "es", "fr", "hi", "it", "ja", "ko", "pl", "pt", "ru", "tr", "zh")
#: the most semantic tokens of one generation (13.6 s of audio; Bark's own cap is 768). Past 681 the
#: coarse stage makes more than 1024 frames, and bark.cpp's fine stage (bark_eval_fine_encoder, as
#: bark-cpp-python 0.2.0 vendors it) writes each later window's samples past the end of its buffer:
#: the heap is corrupted and the process aborts ("free(): invalid next size"), with any model.
SEMANTIC_TOKENS = 681
#: positions of the semantic model's context that the prompt takes (256 text + 1 infer token) before
#: the first semantic token; the rest of its block holds the generated ones
PROMPT_POSITIONS = 256


class BarkCppOptions(SpeechOptions):
    temperature: float = Field(0.7, ge=0, le=5, description="semantic and coarse temperature; 0 = argmax")
    fine_temperature: float = Field(0.5, ge=0, le=5, description="fine model's temperature; 0 = argmax")
    min_eos_p: float = Field(
        0.2, gt=0, le=1, description="end a sentence once end-of-speech is at least this likely"
    )
    semantic_tokens: int = Field(
        SEMANTIC_TOKENS,
        ge=1,
        le=SEMANTIC_TOKENS,
        description="the most semantic tokens of one sentence (49.9 a second); more crash bark.cpp",
    )
    seed: int | None = Field(
        None, description="seed of the model's sampler; default ModelOptions.Seed, -1 random"
    )
    threads: int = Field(0, ge=0, description="CPU threads; 0 = ModelOptions.Threads, else the CPUs here")


class BarkCpp(SpeechBackend):
    name = "bark-cpp"
    Options = BarkCppOptions
    # One bark.cpp context: its buffers and sampler serve one generation at a time, which keeps the
    # cores busy. The rest queue in order.
    default_concurrency = 1

    def __init__(self) -> None:
        self._model: Model | None = None
        self._names: set[str] = set()

    # -- lifecycle -----------------------------------------------------------------------------
    def refuse(self, model: ModelRef) -> str | None:
        path = model.local_path()
        try:
            if path.is_dir():
                return (
                    f"{model.path!r} is a folder; bark.cpp loads one GGML file (ggml_weights.bin from "
                    "bark.cpp's convert.py)"
                )
            if not path.is_file():
                return f"no bark.cpp model at {model.path!r}; this backend downloads nothing"
            with path.open("rb") as handle:
                head = handle.read(4)
        except (OSError, ValueError) as err:  # unreadable, a NUL or an over-long name
            return f"cannot read {model.path!r}: {err}"
        if head != modelfile.HEAD:
            kind = "a GGUF file (an LLM format)" if head == b"GGUF" else f"a file starting with {head!r}"
            return f"{model.path!r} is {kind}, not a bark.cpp model (GGML, magic 'ggml')"
        return None

    def load(self, model: ModelRef, options: BaseModel, request: pb.ModelOptions) -> str:
        assert isinstance(options, BarkCppOptions)
        path = model.local_path()
        try:
            layout = modelfile.read(path)
        except modelfile.NotBarkCpp as err:
            raise Refused(str(err)) from err
        room = layout.semantic.hparams["block_size"] - PROMPT_POSITIONS
        if options.semantic_tokens > room:
            raise Refused(
                f"option semantic_tokens={options.semantic_tokens} is more than the {room} the semantic "
                f"model's context holds after the prompt"
            )
        from localfleet_bark_cpp import engine  # bark_cpp and numpy: imported with the first model

        seed = options.seed if options.seed is not None else request.Seed
        sampling = engine.Sampling(
            options.temperature,
            options.fine_temperature,
            options.min_eos_p,
            options.semantic_tokens,
            secrets.randbits(32) if seed < 0 else seed & 0xFFFFFFFF,
        )
        threads = cap_threads(options.threads or request.Threads) or usable()
        loaded = engine.load(path, layout, sampling, threads)
        if self._model is not None:
            self._model.close()
        self._model = loaded
        self._names = {model.name, path.name}
        self.max_chars = options.max_chars
        plural = "s" if threads > 1 else ""
        return (
            f"Bark {path.name} on bark.cpp ({layout.ftype}), {layout.sample_rate} Hz, up to "
            f"{options.semantic_tokens} semantic tokens a sentence, {threads} thread{plural}"
        )

    def unload(self) -> str:
        model, self._model = self._model, None
        if model is not None:
            model.close()
        return "released the model"

    def memory(self) -> dict[str, int]:
        model = self._model
        return {"model": model.layout.nbytes} if model else {}

    # -- one request ---------------------------------------------------------------------------
    def utterance(self, request: SpeechRequest) -> Utterance:
        model = self._model
        assert model is not None  # the runtime admits requests only with a model loaded
        require_model(request.model, self._names, model.name)
        if request.voice:
            raise NotFound(
                f"unknown voice {excerpt(request.voice)}; bark.cpp has no voice presets: send no voice"
            )
        if request.language:
            code = request.language.lower().replace("_", "-").split("-")[0]
            if code not in LANGUAGES:
                raise BadInput(
                    f"language {excerpt(request.language)} is not one Bark speaks; it speaks "
                    f"{', '.join(LANGUAGES)} (from the text itself: language only checks)"
                )
        return Utterance(model.sample_rate, functools.partial(model.pcm, request.text), "bark.cpp")
