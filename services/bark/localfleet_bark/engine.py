"""Bark (transformers' BarkModel) behind plain Python types: the only module that imports torch,
transformers and numpy.

Bark makes audio in three autoregressive stages and a codec: text -> semantic tokens (49.9 a second of
audio) -> coarse EnCodec codes -> fine codes -> 24 kHz waveform. One generation makes at most the
semantic stage's `max_new_tokens` (768 in Bark's config: about 15 s), so speech is made a sentence at a
time, each sentence's PCM handed on as soon as it is decoded, and a sound is one generation cut at the
duration asked. A voice preset (the model's speaker embeddings) is the history the three stages start
from; the same preset for every sentence keeps one speaker through a text.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoProcessor, BarkModel, StoppingCriteria, StoppingCriteriaList
from transformers.utils import logging as hf_logging
from transformers.utils.hub import cached_file

from localfleet.cpus import cap_threads
from localfleet.errors import BadInput, Cancelled, Refused
from localfleet.speech import PIECE_CHARS, pcm16, split_text

log = logging.getLogger(__name__)

# Progress bars, and a deprecation notice on every generation (Bark's generate passes its sub-configs
# beside keyword arguments itself), are noise in a server's log.
hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]

#: the arrays of a voice preset and how many dimensions each has (BarkProcessor.preset_shape)
PRESET_ARRAYS = {"semantic_prompt": 1, "coarse_prompt": 2, "fine_prompt": 2}
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# A sentence ends after . ! ? ... (before whitespace), after CJK's full stops, or at a line break.
_SENTENCE_END = re.compile(r"(?<=[.!?\u2026])\s+|(?<=[\u3002\uff01\uff1f])|\n+")


@dataclass(frozen=True)
class LoadSpec:
    path: str
    device: str = ""  # "" = cuda when available, else cpu
    dtype: str = ""  # "", float32, float16, bfloat16
    threads: int = 0


@dataclass(frozen=True)
class Sampling:
    """How one request samples: `temperature` for the semantic and coarse stages (None: the model's
    generation config), `sample` False for greedy decoding, `seed` None for an unseeded run."""

    temperature: float | None = None
    sample: bool = True
    seed: int | None = None


class _Stop(StoppingCriteria):
    """Ends a stage's token loop within a token once the call is stopped."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        shape = (input_ids.shape[0],)
        return torch.full(shape, self.stop.is_set(), dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


@dataclass
class Model:
    name: str
    sample_rate: int
    #: the voice presets, by name, as tensors on the model's device
    presets: dict[str, dict[str, torch.Tensor]]
    #: semantic tokens one generation makes at most, how many a second of audio takes, and the coarse
    #: stage's frames a second (each one codec hop of samples)
    max_tokens: int
    semantic_rate: float
    coarse_rate: float
    #: text tokens the semantic stage reads (more are cut off by Bark)
    max_text_tokens: int
    device: str
    nbytes: int
    _model: Any
    _processor: Any

    @property
    def max_seconds(self) -> float:
        """The longest sound one generation makes (the coarse stage rounds its length down to a frame)."""
        return math.floor(self.max_tokens * self.coarse_rate / self.semantic_rate) / self.coarse_rate

    def speech(
        self, text: str, preset: str | None, sampling: Sampling, stop: threading.Event | None
    ) -> Iterator[bytes]:
        """s16le mono PCM, one chunk per sentence (or piece of a long one) as each is decoded."""
        self._seed(sampling.seed)
        for piece in split_sentences(text):
            if not any(c.isalnum() for c in piece):
                continue
            audio = self._generate(piece, preset, sampling, None, stop)
            if audio.size:
                yield pcm16(audio)

    def sound(
        self, text: str, seconds: float, sampling: Sampling, stop: threading.Event | None
    ) -> Iterator[bytes]:
        """One generation of `text` as s16le PCM, cut at `seconds` (Bark may end it sooner)."""
        self._seed(sampling.seed)
        # One token more than the duration needs: the coarse stage rounds its length down.
        semantic = min(math.ceil(seconds * self.semantic_rate) + 1, self.max_tokens)
        audio = self._generate(text, None, sampling, semantic, stop)
        yield pcm16(audio[: round(seconds * self.sample_rate)])

    def check_prompt(self, text: str) -> None:
        """Refuse a prompt longer than Bark reads in one generation (it would cut the rest silently)."""
        tokens = len(self._processor.tokenizer(text, add_special_tokens=False)["input_ids"])
        if tokens > self.max_text_tokens:
            raise BadInput(
                f"the prompt is {tokens} tokens; Bark reads at most {self.max_text_tokens}: shorten it"
            )

    def _seed(self, seed: int | None) -> None:
        # Bark samples from torch's global generator; the backend runs one request at a time.
        if seed is not None:
            torch.manual_seed(seed)

    def _generate(
        self,
        text: str,
        preset: str | None,
        sampling: Sampling,
        semantic_tokens: int | None,
        stop: threading.Event | None,
    ) -> np.ndarray:
        inputs = self._processor(text, return_tensors="pt")
        kwargs: dict[str, Any] = {
            "input_ids": inputs["input_ids"].to(self.device),
            "attention_mask": inputs["attention_mask"].to(self.device),
            "do_sample": sampling.sample,
        }
        if preset is not None:
            kwargs["history_prompt"] = self.presets[preset]
        if sampling.sample and sampling.temperature is not None:
            kwargs["semantic_temperature"] = kwargs["coarse_temperature"] = sampling.temperature
        if semantic_tokens is not None:
            kwargs["semantic_max_new_tokens"] = semantic_tokens
        if stop is not None:
            # The semantic and coarse stages loop over tokens; the fine stage and the codec are short.
            kwargs["stopping_criteria"] = StoppingCriteriaList([_Stop(stop)])
        with torch.inference_mode():
            audio = self._model.generate(**kwargs)
        if stop is not None and stop.is_set():
            # The stages ended early: what they made is not the whole audio.
            raise Cancelled("the call was stopped during a Bark generation")
        samples: np.ndarray = audio[0].float().cpu().numpy()
        return samples


def split_sentences(text: str, limit: int = PIECE_CHARS) -> list[str]:
    """The sentences of `text`, a long one cut into pieces of at most `limit` characters: Bark makes
    about 13 s of speech in one generation."""
    return [piece for sentence in _SENTENCE_END.split(text) for piece in split_text(sentence, limit)]


def load(spec: LoadSpec) -> Model:
    device = spec.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if spec.threads > 0:
        torch.set_num_threads(cap_threads(spec.threads))
    dtype = _DTYPES.get(spec.dtype.lower()) if spec.dtype else None
    if spec.dtype and dtype is None:
        raise Refused(f"DType {spec.dtype!r} is not one Bark runs in; use one of {', '.join(_DTYPES)}")
    try:
        processor = AutoProcessor.from_pretrained(spec.path)  # type: ignore[no-untyped-call]
        chosen: dict[str, Any] = {"dtype": dtype} if dtype else {}
        loaded = BarkModel.from_pretrained(spec.path, **chosen)
    except (OSError, ValueError) as err:
        raise Refused(f"cannot load a Bark model from {spec.path!r}: {err}") from err
    model: Any = loaded.to(device).eval()  # type: ignore[arg-type]  # PreTrainedModel.to's decorator
    generation = model.generation_config
    semantic: Mapping[str, Any] = generation.semantic_config
    coarse: Mapping[str, Any] = generation.coarse_acoustics_config
    fine: Mapping[str, Any] = generation.fine_acoustics_config
    shapes = {
        "coarse_prompt": int(coarse.get("n_coarse_codebooks", 2)),
        "fine_prompt": int(fine.get("n_fine_codebooks", 8)),
    }
    presets = _presets(processor, spec.path, shapes, device)
    return Model(
        name=Path(spec.path).name or spec.path,
        sample_rate=int(generation.sample_rate),
        presets=presets,
        max_tokens=int(semantic.get("max_new_tokens") or 768),
        semantic_rate=float(semantic.get("semantic_rate_hz", 49.9)),
        coarse_rate=float(coarse.get("coarse_rate_hz", 75)),
        max_text_tokens=int(semantic.get("max_input_semantic_length", 256)),
        device=device,
        nbytes=sum(p.numel() * p.element_size() for p in model.parameters()),
        _model=model,
        _processor=processor,
    )


def _presets(
    processor: Any, source: str, shapes: dict[str, int], device: str
) -> dict[str, dict[str, torch.Tensor]]:
    """The voice presets of the processor's speaker embeddings that can be read, as tensors.

    Their files are read here, once (from inside the model folder, or the hub's cache for a hub id), so
    no request reads a file. A preset whose files are missing or malformed is left out, with a warning.
    """
    table = getattr(processor, "speaker_embeddings", None) or {}
    presets: dict[str, dict[str, torch.Tensor]] = {}
    skipped: list[str] = []
    for name, files in table.items():
        if name == "repo_or_path" or not isinstance(files, dict):
            continue
        try:
            arrays = {key: _read_array(source, files.get(key), key, shapes) for key in PRESET_ARRAYS}
        except (OSError, ValueError) as err:
            skipped.append(name)
            log.debug("voice preset %s left out: %s", name, err)
            continue
        presets[name] = {key: torch.from_numpy(a).to(device) for key, a in arrays.items()}
    if skipped:
        log.warning("%d of %d voice presets left out: %s", len(skipped), len(skipped) + len(presets), skipped)
    return presets


def _read_array(source: str, relative: object, key: str, shapes: dict[str, int]) -> np.ndarray:
    if not isinstance(relative, str):
        raise ValueError(f"no {key}")
    array: np.ndarray = np.load(_locate(source, relative, key), allow_pickle=False)
    if array.ndim != PRESET_ARRAYS[key] or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{key} is not a {PRESET_ARRAYS[key]}-D array of codes")
    rows = shapes.get(key)
    if rows is not None and array.shape[0] != rows:
        raise ValueError(f"{key} has {array.shape[0]} codebooks, not {rows}")
    return array.astype(np.int64)


def _locate(source: str, relative: str, key: str) -> str:
    """A preset file's path: inside the model folder, or the hub cache's copy for a hub id."""
    root = Path(source)
    if root.is_dir():
        root = root.resolve()
        path = (root / relative).resolve()
        if not path.is_relative_to(root):
            raise ValueError(f"{key} {relative!r} is outside the model folder")
        return str(path)
    if ".." in Path(relative).parts or Path(relative).is_absolute():
        raise ValueError(f"{key} {relative!r} is outside the model repository")
    found = cached_file(source, relative, _raise_exceptions_for_missing_entries=False)
    if found is None:
        raise ValueError(f"{key} {relative!r} is not in {source}")
    return str(found)
