"""whisper: speech to text (AudioTranscription, AudioTranscriptionStream) on whisper.cpp (pywhispercpp).

The same RPCs and units as faster-whisper (the shared `localfleet.audio.TranscriptionBackend`), from a
GGML Whisper model file (`ggml-*.bin`). The request's `threads` is honoured per call.
"""

from __future__ import annotations

import os
import re

from pydantic import BaseModel

from localfleet.audio import TranscriptionBackend
from localfleet.backend import ModelRef
from localfleet.options import NoOptions
from localfleet.proto import backend_pb2 as pb

GGML_MAGIC = b"lmgg"  # 0x67676d6c, little-endian: the first bytes of a whisper.cpp model file
#: ggml model names pywhispercpp downloads (tiny, base.en, small-q5_1, large-v3-turbo, ...)
_NAMED = re.compile(r"^(tiny|base|small|medium|large)(\.en|-v\d)?(-turbo)?(-q\d_\d|-q8_0)?(-tdrz)?$")


class Whisper(TranscriptionBackend):
    name = "whisper"
    Options = NoOptions
    # One whisper.cpp context decodes one file at a time.
    default_concurrency = 1

    def refuse(self, model: ModelRef) -> str | None:
        if os.path.isdir(model.path):
            return (
                "it loads a GGML model file, not a folder (CTranslate2 folders: the faster-whisper backend)"
            )
        if os.path.isfile(model.path):
            with open(model.path, "rb") as f:
                head = f.read(4)
            if head == GGML_MAGIC:
                return None
            kind = "a GGUF file (an LLM format)" if head == b"GGUF" else f"starts with {head!r}"
            return f"{model.path!r} is not a GGML Whisper model: it {kind}"
        if _NAMED.match(model.name):
            return None
        return "it serves GGML Whisper models: a ggml-*.bin file, or a whisper.cpp model name such as base.en"

    def load(self, model: ModelRef, options: BaseModel, request: pb.ModelOptions) -> str:
        from localfleet_whisper import engine

        path = model.path if os.path.isfile(model.path) else engine.resolve(model.name, model.model_dir)
        transcriber = engine.Transcriber(path, request.Threads)
        self.transcriber = transcriber
        kind = "multilingual" if transcriber.multilingual else "English-only"
        return f"whisper.cpp {kind} model from {path}, {transcriber.threads} threads"
