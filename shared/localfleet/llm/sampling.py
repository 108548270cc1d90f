"""PredictOptions' sampling fields as one engine-neutral, checked value.

Every engine that takes the usual knobs by name (vLLM's SamplingParams, mlx-lm's samplers) starts from
this; each maps `off` values its own way (0 TopK, 1.0 TopP and a 1.0 repeat penalty mean "not applied").
Field meanings are the contract's: Temperature 0 is greedy, Tokens 0 is the backend's default, a
negative Seed is random, Logprobs or TopLogprobs above 0 ask for log-probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass

from localfleet.errors import BadInput
from localfleet.llm import limits
from localfleet.proto import backend_pb2 as pb

MAX_TOP_LOGPROBS = 20  # OpenAI's limit
MAX_TOP_K = 1 << 20  # above any vocabulary: bounds the engine's sort, not the choice


@dataclass(frozen=True)
class Sampling:
    """One request's sampling, defaults applied: off values are the neutral ones."""

    max_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    min_p: float = 0.0  # 0: off
    typical_p: float = 1.0  # 1: off
    repeat_penalty: float = 1.0  # 1: off
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None  # None: random
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # None: none; else how many alternatives per token (0: the chosen only)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def sampling(request: pb.PredictOptions, default_tokens: int) -> Sampling:
    """The request's sampling; a value no engine could use is BadInput naming its field."""
    if request.Tokens < 0:
        raise BadInput(f"Tokens is {request.Tokens}; send 0 (the backend's default) or more")
    limits.check_stop_prompts(list(request.StopPrompts))
    top_p = limits.probability("TopP", request.TopP)
    typical_p = limits.probability("TypicalP", request.TypicalP)
    wants_logprobs = request.Logprobs > 0 or request.TopLogprobs > 0
    return Sampling(
        max_tokens=request.Tokens or default_tokens,
        temperature=limits.temperature(request.Temperature),
        top_k=limits.count("TopK", max(request.TopK, 0), MAX_TOP_K),  # negative: off, as llama.cpp
        top_p=top_p or 1.0,
        min_p=limits.probability("MinP", request.MinP),
        typical_p=typical_p or 1.0,
        repeat_penalty=limits.penalty(request.Penalty),
        frequency_penalty=limits.bounded("FrequencyPenalty", request.FrequencyPenalty),
        presence_penalty=limits.bounded("PresencePenalty", request.PresencePenalty),
        seed=request.Seed if request.Seed >= 0 else None,
        stop=tuple(s for s in request.StopPrompts if s),
        ignore_eos=request.IgnoreEOS,
        logprobs=min(max(request.TopLogprobs, 0), MAX_TOP_LOGPROBS) if wants_logprobs else None,
    )
