"""llama-cpp-python past its public API: the one module that touches `Llama`'s private attributes and
`llama_cpp._internals`.

The engine runs its own token loop instead of `Llama.generate` (see `engine`), so it needs what
`Llama.eval` and `Llama._init_sampler` use inside: the model and context wrappers, the batch, the token
record (`input_ids`, `n_tokens`, `_requires_eval`) and the sampler classes of `_internals`. Each access
says why; after a llama-cpp-python upgrade (pinned: 0.3.36) this file is the one to check against its
`llama.py` and `_internals.py`. The C functions of `llama_cpp` itself are its public API, used anywhere.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import llama_cpp
import llama_cpp._internals as internals
import numpy as np
import numpy.typing as npt

from localfleet.errors import EngineFailure


class Native:
    """One `Llama`'s context as the engine drives it: evaluation, the last logits, the token record."""

    def __init__(self, llm: llama_cpp.Llama) -> None:
        self.llm = llm
        self.n_vocab = llm.n_vocab()
        self._model = llm._model  # special tokens' text (token_get_text): Llama has no public accessor
        self._ctx = llm._ctx  # decode, logits and KV-cache edits, as Llama.eval makes them
        self.vocab = self._model.vocab  # the vocabulary pointer llama.cpp's token functions take

    @property
    def n_tokens(self) -> int:
        """Positions the context holds (Llama's own count, kept by `eval`, `reset` and the methods here)."""
        return self.llm.n_tokens

    def token_text(self, token: int) -> str:
        return self._model.token_get_text(token)

    def logits(self) -> npt.NDArray[np.float32]:
        """The last evaluated position's logits: a view of llama.cpp's buffer, valid until the next decode."""
        return np.ctypeslib.as_array(self._ctx.get_logits_ith(-1), shape=(self.n_vocab,))

    def chain(self) -> Chain:
        return Chain(self._ctx)

    # -- evaluation --------------------------------------------------------------------------------
    def eval_prompt(self, tokens: list[int], cache_prompt: bool) -> None:
        """Evaluate `tokens` into the context, after the prefix it already holds when `cache_prompt`."""
        llm = self.llm
        keep = 0
        if cache_prompt and llm.n_tokens > 0:
            for a, b in zip(llm._input_ids, tokens, strict=False):  # the tokens Llama.eval recorded
                if a != b:
                    break
                keep += 1
            keep = min(keep, len(tokens) - 1)  # evaluate at least one token: its logits start the reply
        if keep > 0 and self._ctx.kv_cache_seq_rm(-1, keep, -1):
            llm.n_tokens = keep  # Llama.eval continues from n_tokens
        else:
            self.clear()
        try:
            llm.eval(tokens[llm.n_tokens :])
        except RuntimeError as exc:
            self.clear()
            raise EngineFailure(f"llama.cpp could not evaluate the prompt: {exc}") from None

    def eval_one(self, token: int) -> None:
        """`Llama.eval([token])` without its KV trim (nothing lies past the end while generating).

        Its only call into llama.cpp is the decode: the one point where this thread gives up the GIL,
        so the event loop sends the last token while the next one computes, not in between.
        """
        llm = self.llm
        batch = llm._batch  # Llama.eval's batch, reused: no allocation per token
        batch.set_batch([token], n_past=llm.n_tokens, logits_all=False)
        try:
            self._ctx.decode(batch)
        except RuntimeError as exc:
            raise EngineFailure(f"llama.cpp could not evaluate a generated token: {exc}") from None
        # What Llama.eval records after a decode: the token at its position (a cached prompt's prefix
        # match reads it), the count, and that the last logits are this token's.
        llm.input_ids[llm.n_tokens] = token
        llm.n_tokens += 1
        llm._requires_eval = False

    def media_evaluated(self, positions: int) -> None:
        """Record a prompt that libmtmd evaluated into the context: `positions` long, none of it text."""
        llm = self.llm
        llm.n_tokens = positions  # Llama's count: the next eval or eval_one continues from here
        llm.input_ids[: llm.n_tokens] = -1  # image positions: no later prompt may reuse them as text

    def clear(self) -> None:
        """Forget the context's tokens (the next prompt is evaluated from its start)."""
        self.llm.reset()  # type: ignore[no-untyped-call]  # unannotated in llama-cpp-python
        self._ctx.kv_cache_clear()  # type: ignore[no-untyped-call]  # unannotated in llama-cpp-python

    def decode_sequence(self, tokens: Sequence[int]) -> None:
        """Decode `tokens` as sequence 0 from position 0, with every position's output (embeddings)."""
        batch = self.llm._batch  # Llama's batch (n_batch tokens): the caller keeps `tokens` within it
        batch.reset()  # type: ignore[no-untyped-call]  # unannotated in llama-cpp-python
        batch.add_sequence(tokens, 0, True)
        self._ctx.decode(batch)

    def reset_batch(self) -> None:
        """Leave Llama's batch empty again after `decode_sequence`."""
        self.llm._batch.reset()  # type: ignore[no-untyped-call]  # unannotated in llama-cpp-python


class Chain:
    """llama.cpp's sampler chain, built with `_internals.LlamaSampler` as `Llama._init_sampler` builds its
    own: each add_* passes straight through, and `close` frees the chain with its samplers."""

    def __init__(self, ctx: internals.LlamaContext) -> None:
        self._ctx = ctx
        self._sampler = internals.LlamaSampler()  # type: ignore[no-untyped-call]  # unannotated upstream

    def add_logit_bias(self, n_vocab: int, bias: dict[int, float]) -> None:
        self._sampler.add_logit_bias(n_vocab, bias)

    def add_penalties(
        self,
        n_vocab: int,
        penalty_last_n: int,
        penalty_repeat: float,
        penalty_freq: float,
        penalty_present: float,
    ) -> None:
        self._sampler.add_penalties(n_vocab, penalty_last_n, penalty_repeat, penalty_freq, penalty_present)

    def add_greedy(self) -> None:
        self._sampler.add_greedy()  # type: ignore[no-untyped-call]  # unannotated in llama-cpp-python

    def add_mirostat(self, n_vocab: int, seed: int, tau: float, eta: float, m: int) -> None:
        self._sampler.add_mirostat(n_vocab, seed, tau, eta, m)

    def add_mirostat_v2(self, seed: int, tau: float, eta: float) -> None:
        self._sampler.add_mirostat_v2(seed, tau, eta)

    def add_top_k(self, k: int) -> None:
        self._sampler.add_top_k(k)

    def add_typical(self, p: float, min_keep: int) -> None:
        self._sampler.add_typical(p, min_keep)

    def add_top_p(self, p: float, min_keep: int) -> None:
        self._sampler.add_top_p(p, min_keep)

    def add_min_p(self, p: float, min_keep: int) -> None:
        self._sampler.add_min_p(p, min_keep)

    def add_temp(self, temp: float) -> None:
        self._sampler.add_temp(temp)

    def add_dist(self, seed: int) -> None:
        self._sampler.add_dist(seed)

    def sample(self) -> int:
        """The chain's token from the context's last logits (llama.cpp accepts it into the chain)."""
        return int(self._sampler.sample(self._ctx, -1))

    def apply(self, array: llama_cpp.llama_token_data_array) -> None:
        """Run the chain over a candidates array: it sets `array.selected`."""
        pointer = self._sampler.sampler  # the llama_sampler the C API applies: LlamaSampler holds it
        llama_cpp.llama_sampler_apply(pointer, ctypes.byref(array))

    def accept(self, token: int) -> None:
        self._sampler.accept(token)

    def close(self) -> None:
        self._sampler.close()  # type: ignore[no-untyped-call]  # unannotated in llama-cpp-python


class Candidates:
    """Every token with a logit, for samplers applied by hand (a grammar beside the chain)."""

    def __init__(self, n_vocab: int) -> None:
        # _internals' numpy-backed array: refilled for each token without allocating
        self._array = internals.LlamaTokenDataArray(n_vocab=n_vocab)

    def filled(self, logits: npt.NDArray[np.float32]) -> llama_cpp.llama_token_data_array:
        """The array holding `logits` for every token, unsorted, no token selected yet."""
        self._array.copy_logits(logits)
        array = self._array.candidates
        array.selected = -1
        return array
