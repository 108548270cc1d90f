"""What passes between the servicer and the engine: plain values, no protobuf and no vLLM types."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from localfleet.llm.chat_output import ChatReplies
from localfleet.llm.sampling import Sampling


@dataclass(frozen=True)
class LoadSpec:
    """One engine: the model folder or hub id and the vLLM engine arguments LoadModel chose."""

    model: str
    tokenizer: str = ""
    dtype: str = "auto"
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None
    tensor_parallel_size: int = 1
    quantization: str | None = None
    enforce_eager: bool = False
    trust_remote_code: bool = False
    limit_mm_per_prompt: dict[str, int] = field(default_factory=dict)
    embeddings: bool = False
    #: LoRA adapters (folder, scale): each request runs with the first one
    loras: tuple[tuple[str, float], ...] = ()
    max_lora_rank: int = 16
    max_num_seqs: int | None = None
    kv_cache_bytes: int | None = None
    seed: int | None = None
    chat_template: str = ""
    #: EngineArgs: further AsyncEngineArgs fields by name, applied last
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Job:
    """A request made ready (template rendered, tokens counted, values checked) for the engine."""

    prompt: str  # the text the model reads (the rendered chat, or Prompt)
    ids: tuple[int, ...]  # its tokens
    sampling: Sampling
    images: tuple[bytes, ...] = ()
    grammar: str = ""  # GBNF / EBNF
    json_schema: dict[str, Any] | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)
    #: how the output is read as a chat message (content, reasoning, tool calls); None: plain text
    chat: ChatReplies | None = None


@dataclass(frozen=True)
class Step:
    """What one engine step adds to a generation."""

    text: str
    tokens: int  # produced so far
    prompt_tokens: int
    prompt_ms: float
    generation_ms: float
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    finish: str | None = None  # "stop", "length", "abort" on the last step
