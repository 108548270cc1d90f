"""What the engine is given and gives back: plain dataclasses, no llama_cpp import (the servicer builds
and reads them without loading llama-cpp-python)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class LoadSpec:
    """What LoadModel asked for, in llama.cpp's terms (the servicer maps ModelOptions onto it)."""

    path: str
    context_size: int = 4096
    batch: int = 512
    threads: int = 0  # 0: every CPU this process may use
    gpu_layers: int = 0
    mmap: bool = True
    mlock: bool = False
    flash_attention: bool = False
    cache_type_k: str = ""
    cache_type_v: str = ""
    rope_freq_base: float = 0.0
    rope_freq_scale: float = 0.0
    embeddings: bool = False
    loras: tuple[tuple[str, float], ...] = ()
    mmproj: str = ""
    chat_template: str = ""  # overrides the GGUF's
    nice: int = 0  # niceness of the threads that compute (0: as the process)


@dataclass(frozen=True)
class Sampling:
    """One request's sampling parameters, already defaulted (see the servicer)."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 1.0
    min_p: float = 0.0
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    mirostat: int = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    seed: int = -1  # negative: random
    max_tokens: int = 0  # 0: until the context is full
    stop: tuple[str, ...] = ()
    grammar: str = ""
    ignore_eos: bool = False
    logit_bias: dict[int, float] = field(default_factory=dict)
    logprobs: bool = False
    top_logprobs: int = 0
    cache_prompt: bool = False


@dataclass(frozen=True)
class Prompt:
    tokens: list[int]
    text: str
    images: tuple[bytes, ...] = ()
    reasoning_open: bool = False  # the rendered chat ends inside <think>
    stop: tuple[str, ...] = ()  # stop strings the template implies


@dataclass
class Step:
    """What one sampled token releases (text can be held back while it may start a stop string)."""

    text: bytes
    logprobs: list[dict[str, Any]]
    tokens: int
    prompt_tokens: int
    prompt_ms: float
    generation_ms: float
    finish: str | None = None  # "stop" or "length" on the last step
