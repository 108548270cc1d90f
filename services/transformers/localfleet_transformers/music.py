"""MusicGen on transformers: a text prompt (and audio to continue) to sound.

Imported at LoadModel beside engine.py, as heavy (torch, transformers). Plain Python and numpy in and out.
MusicGen predicts EnCodec codes, several codebooks a frame, each codebook one step behind the one before
(its delay pattern): the audio has `frames = steps - (codebooks - 1)` frames, at the codec's frame rate.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoModelForTextToWaveform,
    AutoProcessor,
    StoppingCriteria,
    StoppingCriteriaList,
)

from localfleet.errors import Cancelled, EngineFailure, NotFound, Refused

#: config model_type -> what it is called in messages
FAMILIES = {"musicgen": "MusicGen", "musicgen_melody": "MusicGen Melody"}


@dataclass(frozen=True)
class Asked:
    """One generation, checked by the servicer."""

    text: str
    seconds: float
    temperature: float | None = None
    #: None: the model's own generation config decides (the published ones sample)
    sample: bool | None = None
    #: audio to continue, mono float32 at the model's sample rate
    prompt: np.ndarray | None = None
    #: re-seeds torch's RNG before sampling; None draws afresh
    seed: int | None = None
    stop: threading.Event | None = None
    progress: Callable[[int, int], None] | None = None


def load_music(path: str, device: str, dtype: torch.dtype | None, common: dict[str, Any]) -> MusicModel:
    try:
        family = str(getattr(AutoConfig.from_pretrained(path, **common), "model_type", ""))
        if family == "musicgen_melody":
            raise Refused(
                f"{path!r} is MusicGen Melody, which is not served here: its processor needs torchaudio "
                "(chroma features), which this backend's environment does not install; load a MusicGen model"
            )
        if family not in FAMILIES:  # Type named MusicGen, the folder holds something else
            raise Refused(
                f"{path!r} holds a {family or 'model of no known type'}, not MusicGen; load it without Type"
            )
        processor = AutoProcessor.from_pretrained(path, **common)  # type: ignore[no-untyped-call]
        model = AutoModelForTextToWaveform.from_pretrained(path, dtype=dtype, **common).to(device).eval()
    except OSError as exc:
        raise NotFound(
            f"cannot load {path!r}: {exc}. Give a MusicGen folder on this machine (config.json, weights, "
            "tokenizer and preprocessor_config.json) or a model id already in the Hugging Face cache"
        ) from None
    return MusicModel(model, processor, device, family)


class MusicModel:
    kind = "musicgen"

    def __init__(self, model: Any, processor: Any, device: str, family: str) -> None:
        self.model = model
        self.processor = processor
        self.device = device
        self.family = FAMILIES[family]
        codec = model.config.audio_encoder
        self.sample_rate: int = int(codec.sampling_rate)
        self.frame_rate: int = int(model.audio_encoder.config.frame_rate)
        self.channels: int = int(model.config.decoder.audio_channels)
        # A stereo model interleaves its channels' codebooks: each channel's own are delayed.
        self.delay = int(model.decoder.num_codebooks) // self.channels - 1
        self.name = type(model).__name__
        config = model.generation_config
        self.guidance: float | None = config.guidance_scale
        self.samples_by_default = bool(config.do_sample)

    def nbytes(self) -> int:
        if self.model is None:
            return 0
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    def close(self) -> None:
        self.model = None
        self.processor = None

    def steps_for(self, seconds: float) -> int:
        """Decoder steps that make `seconds` of audio after any prompt."""
        return max(1, math.ceil(seconds * self.frame_rate)) + self.delay

    def generate(self, asked: Asked, guidance: float | None = None) -> np.ndarray:
        """Mono float32 at `sample_rate`: the prompt's audio (as the codec hears it), then `seconds` new."""
        model = self.model
        if model is None:
            raise EngineFailure("the model was unloaded during the request")
        inputs = self.inputs(asked)
        steps = self.steps_for(asked.seconds)
        kwargs: dict[str, Any] = {"max_new_tokens": steps}
        sample = asked.sample
        if sample is None:  # a temperature asks for sampling; else the model's own config decides
            sample = asked.temperature is not None or self.samples_by_default
        kwargs["do_sample"] = sample
        if sample and asked.temperature is not None:
            kwargs["temperature"] = asked.temperature
        scale = guidance if guidance is not None else self.guidance
        if scale is not None:
            kwargs["guidance_scale"] = scale
        watch = _Watch(asked, steps, self.frame_rate)
        if sample and asked.seed is not None:  # process-wide RNG: one generation at a time keeps it seeded
            torch.manual_seed(asked.seed)
        with torch.inference_mode():
            audio = model.generate(**inputs, stopping_criteria=StoppingCriteriaList([watch]), **kwargs)
        samples: np.ndarray = audio[0].float().mean(dim=0).cpu().numpy()  # stereo to mono
        prompt = 0 if asked.prompt is None else len(asked.prompt)
        return samples[: prompt + round(asked.seconds * self.sample_rate)]

    def inputs(self, asked: Asked) -> dict[str, Any]:
        """The processor's tensors for `asked`: the text's token ids, and the prompt's samples if any."""
        # Without a text (continuation alone) the prompt is the empty text: the tokenizer's end mark. A
        # text past the encoder's window (T5's 512 tokens) is cut, as its attention grows with the square.
        fields: dict[str, Any] = {
            "text": [asked.text],
            "text_kwargs": {"truncation": True},
            "return_tensors": "pt",
        }
        if asked.prompt is not None:
            fields.update(audio=asked.prompt, sampling_rate=self.sample_rate)
        inputs = self.processor(**fields)
        inputs.pop("padding_mask", None)  # one prompt, nothing padded; generate() takes no such input
        return {k: v.to(self.device) if hasattr(v, "to") else v for k, v in inputs.items()}


class _Watch(StoppingCriteria):
    """Called after every decoder step: reports each second of audio made, and ends a stopped call there
    (an exception leaves generate() at once, without decoding what was made)."""

    def __init__(self, asked: Asked, steps: int, frame_rate: int) -> None:
        self.stop = asked.stop
        self.progress = asked.progress
        self.steps = steps
        self.frame_rate = frame_rate
        self.done = 0

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        self.done += 1
        if self.stop is not None and self.stop.is_set():
            raise Cancelled("SoundGeneration stopped: the caller went away or its deadline passed")
        if self.progress is not None and (self.done % self.frame_rate == 0 or self.done == self.steps):
            self.progress(math.ceil(self.done / self.frame_rate), math.ceil(self.steps / self.frame_rate))
        return torch.zeros((input_ids.shape[0],), dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]
