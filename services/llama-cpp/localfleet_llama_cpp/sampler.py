"""Choosing each token: the sampler chain `Llama._init_sampler` builds, plus logit bias and IgnoreEOS,
and a GBNF grammar sampled beside the chain as llama.cpp's own server does."""

from __future__ import annotations

import ctypes
import math
from typing import Any

import llama_cpp
import numpy as np
import numpy.typing as npt

from localfleet.errors import BadInput, EngineFailure
from localfleet_llama_cpp.native import Candidates, Chain, Native
from localfleet_llama_cpp.spec import Sampling
from localfleet_llama_cpp.vocab import Vocab

_RANDOM_SEED = 0xFFFFFFFF  # llama.cpp draws a random seed for this value


def grammar_sampler(vocab: Any, grammar: str) -> Any:
    """llama.cpp's grammar sampler for `grammar` (the caller frees it); BadInput when it is not GBNF."""
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    if not sampler:
        raise BadInput(
            "Grammar is not valid GBNF (llama.cpp's grammar parser rejected it, or it has no 'root' "
            "rule); the backend log names the position"
        )
    return sampler


def check_grammar(vocab: Any, grammar: str) -> None:
    """Raise BadInput when llama.cpp's GBNF parser rejects `grammar` (fast, before any work)."""
    llama_cpp.llama_sampler_free(grammar_sampler(vocab, grammar))


class Sampler:
    """One request's sampling: the chain and, apart from it, the grammar sampler (None without a
    grammar); `close` frees both."""

    def __init__(self, native: Native, vocab: Vocab, s: Sampling) -> None:
        self._native = native
        n_vocab = vocab.n_vocab
        chain = native.chain()
        grammar = None
        bias = dict(s.logit_bias)
        if s.ignore_eos and not s.grammar:  # with a grammar, end of text is how the grammar finishes
            bias.update(dict.fromkeys(vocab.eog_tokens(), -math.inf))
        if bias:
            chain.add_logit_bias(n_vocab, bias)
        chain.add_penalties(
            n_vocab=n_vocab,
            penalty_last_n=s.repeat_last_n,
            penalty_repeat=s.repeat_penalty,
            penalty_freq=s.frequency_penalty,
            penalty_present=s.presence_penalty,
        )
        if s.grammar:
            grammar = grammar_sampler(vocab.pointer, s.grammar)  # apart from the chain: see sample()
        seed = _RANDOM_SEED if s.seed < 0 else s.seed & 0xFFFFFFFF
        if s.temperature <= 0.0:
            chain.add_greedy()
        elif s.mirostat == 1:
            chain.add_mirostat(n_vocab, seed, s.mirostat_tau, s.mirostat_eta, 100)
        elif s.mirostat == 2:
            chain.add_mirostat_v2(seed, s.mirostat_tau, s.mirostat_eta)
        else:
            chain.add_top_k(s.top_k)
            chain.add_typical(s.typical_p, 1)
            chain.add_top_p(s.top_p, 1)
            chain.add_min_p(s.min_p, 1)
            chain.add_temp(s.temperature)
            chain.add_dist(seed)
        self.chain = chain
        self.grammar: Any = grammar
        self._candidates = Candidates(n_vocab) if grammar else None

    def sample(self) -> int:
        """The next token. With a grammar, as llama.cpp's own server samples: by the chain alone, and the
        grammar asked about that one token; only when it refuses it is the grammar applied to the whole
        vocabulary (its costly step: every candidate against every parse) and the chain run again.

        The grammar's verdict on the final token is checked before it is accepted: when a grammar allows
        no token at all (an empty range such as [z-a], a code point past U+10FFFF, a token id outside the
        vocabulary), the chain still picks one, and llama.cpp's grammar aborts the process on it."""
        chain, grammar, candidates = self.chain, self.grammar, self._candidates
        if grammar is None or candidates is None:
            return chain.sample()
        logits = self._native.logits()
        token = _pick(chain, candidates, logits)
        if not _allows(grammar, token):
            token = _pick(chain, candidates, logits, grammar)
            if not _allows(grammar, token):
                raise BadInput(
                    "the Grammar allows no token at this point of the output (an empty character range "
                    "such as [z-a], a code point past U+10FFFF, or a token id outside the vocabulary?): fix "
                    "the grammar"
                )
        llama_cpp.llama_sampler_accept(grammar, token)
        chain.accept(token)
        return token

    def close(self) -> None:
        self.chain.close()
        if self.grammar is not None:
            llama_cpp.llama_sampler_free(self.grammar)


def _pick(chain: Chain, candidates: Candidates, logits: npt.NDArray[np.float32], grammar: Any = None) -> int:
    """The token the chain selects from `logits`, after `grammar` filters them when one is given."""
    array = candidates.filled(logits)
    if grammar is not None:
        llama_cpp.llama_sampler_apply(grammar, ctypes.byref(array))
    chain.apply(array)
    if not 0 <= array.selected < array.size:
        raise EngineFailure("llama.cpp's samplers selected no token")
    return int(array.data[array.selected].id)


def _allows(grammar: Any, token: int) -> bool:
    """Whether `grammar` (a llama.cpp grammar sampler, in its current state) accepts `token` next."""
    one = (llama_cpp.llama_token_data * 1)(llama_cpp.llama_token_data(token, 0.0, 0.0))
    array = llama_cpp.llama_token_data_array(data=one, size=1, selected=-1, sorted=False)
    llama_cpp.llama_sampler_apply(grammar, ctypes.byref(array))
    return math.isfinite(one[0].logit)
