"""KittenTTS ONNX models (kittenml, ONNX Runtime) behind plain Python types: the only module that imports
kittenml, onnxruntime and numpy.

A KittenTTS model is a folder laid out as its Hugging Face repository: `config.json` (`"type": "ONNX1"`
or `"ONNX2"`, `model_file`, `voices`, optional `voice_aliases` and `speed_priors`), the ONNX graph
(input_ids int64[1,T], style float32[1,256], speed float32[1] -> waveform float32[N] at 24 kHz) and
`voices.npz` (one style table per voice). kittenml phonemizes with espeak-ng (en-us) and runs the graph
one sentence at a time; this module hands each sentence's audio on as s16le PCM as soon as it is ready.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
from kittenml.kittentts_legacy.onnx_model import KittenTTS_1_Onnx  # type: ignore[import-untyped]
from kittenml.preprocess import TextPreprocessor  # type: ignore[import-untyped]

from localfleet.speech import PIECE_CHARS, pcm16, split_text

SAMPLE_RATE = 24000
#: config.json types of the ONNX KittenTTS models (kittenml.repo.ONNX_TYPES)
ONNX_TYPES = ("ONNX1", "ONNX2")
#: kittenml's default voice, used when the model has it and neither option nor request names one
DEFAULT_VOICE = "expr-voice-5-m"
# After . ! ? ; : and a space, or a line break.
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+|\n+")

# phonemizer warns on every sentence that its word count differs after punctuation handling; noise here.
logging.getLogger("phonemizer").setLevel(logging.ERROR)


class NotKitten(Exception):
    """The folder is not an ONNX KittenTTS model; the message says why."""


@dataclass
class Model:
    name: str
    #: the names a request may use: the config's aliases (Bella, ...) then the voices themselves
    voices: list[str]
    default_voice: str
    sample_rate: int
    nbytes: int
    _kitten: Any
    _clean: Any

    def pcm(self, text: str, voice: str, speed: float, clean: bool) -> Iterator[bytes]:
        """s16le mono PCM, one chunk per sentence (or piece of a long one) as it is synthesized."""
        if clean:
            text = self._clean(text)
        for piece in split_sentences(text):
            if not any(c.isalnum() for c in piece):
                continue
            audio = self._kitten.generate_single_chunk(piece, voice=voice, speed=speed)
            audio = np.asarray(audio, dtype=np.float32).reshape(-1)
            if audio.size:
                yield pcm16(audio)


def split_sentences(text: str, limit: int = PIECE_CHARS) -> list[str]:
    """The sentences of `text`, a long one cut into pieces of at most `limit` characters: a run's
    memory grows with its length."""
    return [piece for sentence in _SENTENCE_END.split(text) for piece in split_text(sentence, limit)]


def read_config(folder: Path) -> dict[str, Any]:
    """The model's config.json, checked to be an ONNX KittenTTS model whose files are there."""
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise NotKitten(f"cannot read {path}: {err}") from err
    if not isinstance(config, dict):
        raise NotKitten(f"{path} is not a JSON object")
    kind = config.get("type")
    if kind not in ONNX_TYPES:
        raise NotKitten(
            f"{path} declares type {kind!r}; this backend serves the ONNX KittenTTS models "
            f"({', '.join(ONNX_TYPES)}), not KittenTTS 2"
        )
    for key in ("model_file", "voices"):
        name = config.get(key)
        if not isinstance(name, str) or not (folder / name).is_file():
            raise NotKitten(f"{path}: {key} {name!r} is not a file in {folder}")
    for key in ("voice_aliases", "speed_priors"):
        if not isinstance(config.get(key, {}), dict):
            raise NotKitten(f"{path}: {key} is not an object")
    return config


def providers() -> str:
    """kittenml's name for the execution provider: CUDA when this onnxruntime has it."""
    return "cuda" if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else "cpu"


def load(folder: Path) -> Model:
    config = read_config(folder)
    model_path = folder / config["model_file"]
    voices_path = folder / config["voices"]
    aliases = {str(k): str(v) for k, v in config.get("voice_aliases", {}).items()}
    kitten = KittenTTS_1_Onnx(
        model_path=str(model_path),
        voices_path=str(voices_path),
        speed_priors=config.get("speed_priors", {}),
        voice_aliases=aliases,
        backend=providers(),
    )
    # kittenml speaks its eight voices (a fixed list) that the voices file has.
    present = [v for v in kitten.available_voices if v in kitten.voices.files]
    kitten.available_voices = present
    named = [alias for alias, voice in aliases.items() if voice in present]
    return Model(
        name=folder.name,
        voices=[*named, *present],
        default_voice=DEFAULT_VOICE if DEFAULT_VOICE in present else (present[0] if present else ""),
        sample_rate=SAMPLE_RATE,
        nbytes=model_path.stat().st_size + voices_path.stat().st_size,
        _kitten=kitten,
        _clean=TextPreprocessor(remove_punctuation=False),
    )
