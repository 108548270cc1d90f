"""The engine: one `llama_cpp.Llama` and what the servicer asks of it. Plain Python in and out, no protobuf.

One `Engine` holds one `llama_cpp.Llama` (one context, one sequence): the runtime runs one call at a time
on it (default_concurrency 1). Generation is our own token loop over the library's context and sampler
chain, the same steps as `Llama.generate`, so that each token can be handed out as soon as it is sampled,
a stop flag is checked between tokens, stop strings are cut at the byte, and logprobs are read from the
last logits without `logits_all`.

Its parts: `spec` (what goes in and out), `template` (chat rendering), `vocab` (tokens), `sampler` (token
choice, grammars), `media` (images), and `native`, the one module that reaches into llama-cpp-python's
private attributes.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import llama_cpp
import numpy as np

from localfleet.cpus import cap_threads, usable
from localfleet.errors import BadInput, EngineFailure
from localfleet.inputs import excerpt
from localfleet.llm.chat_output import opens_reasoning
from localfleet.llm.stops import release
from localfleet_llama_cpp import sampler
from localfleet_llama_cpp.context import context_for, trained_context
from localfleet_llama_cpp.media import Projector
from localfleet_llama_cpp.native import Native
from localfleet_llama_cpp.spec import LoadSpec, Prompt, Sampling, Step
from localfleet_llama_cpp.template import Template
from localfleet_llama_cpp.vocab import Vocab

log = logging.getLogger(__name__)

_CACHE_TYPES = {
    name.removeprefix("GGML_TYPE_").lower(): value
    for name, value in vars(llama_cpp).items()
    if name.startswith("GGML_TYPE_") and name != "GGML_TYPE_COUNT" and isinstance(value, int)
}


class Engine:
    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        threads = _threads(spec.threads)
        cache_k = _cache_type("CacheTypeKey", spec.cache_type_k)
        cache_v = _cache_type("CacheTypeValue", spec.cache_type_v)
        self.context = context_for(spec.context_size, trained_context(spec.path), spec.rope_freq_scale)
        if self.context.note:
            log.warning("%s", self.context.note)
        try:
            self.llm = llama_cpp.Llama(
                model_path=spec.path,
                n_ctx=self.context.tokens,
                n_batch=spec.batch,
                n_ubatch=spec.batch,
                n_threads=threads,
                n_threads_batch=threads,
                n_gpu_layers=spec.gpu_layers,
                use_mmap=spec.mmap,
                use_mlock=spec.mlock,
                flash_attn=spec.flash_attention,
                type_k=cache_k,
                type_v=cache_v,
                rope_freq_base=spec.rope_freq_base,
                rope_freq_scale=spec.rope_freq_scale,
                embedding=spec.embeddings,
                verbose=log.isEnabledFor(logging.DEBUG),
            )
        except ValueError as exc:  # the library's word for "could not load"
            raise EngineFailure(f"llama.cpp could not load {spec.path}: {exc}") from None
        self.native = Native(self.llm)
        self.n_ctx = self.llm.n_ctx()
        self.n_vocab = self.native.n_vocab
        self.n_embd = self.llm.n_embd()
        self.vocab = Vocab(self.native)
        self._loras: list[Any] = []
        self._projector: Projector | None = None
        try:
            self._apply_loras(spec.loras)
            if spec.mmproj:
                self._projector = Projector(
                    spec.mmproj, self.llm.model, gpu=spec.gpu_layers != 0, threads=threads
                )
        except BaseException:
            self.close()
            raise
        self.template = Template(
            spec.chat_template,
            self.llm.metadata.get("tokenizer.chat_template", ""),
            bos=self.vocab.bos_text,
            eos=self.vocab.token_text(self.llm.token_eos()),
        )
        self.family = self.template.family

    # -- lifecycle -----------------------------------------------------------------------------
    def describe(self) -> str:
        return (
            f"{os.path.basename(self.spec.path)}: context {self.n_ctx}, vocab {self.n_vocab}, "
            f"chat template from {self.template.source} ({self.family.value} tool calls)"
            + (f", {len(self._loras)} LoRA adapter(s)" if self._loras else "")
            + (", multimodal projector" if self._projector is not None else "")
            + (f"; {self.context.note}" if self.context.note else "")
        )

    def close(self) -> None:
        if self._projector is not None:
            self._projector.close()
            self._projector = None
        self.llm.close()  # the context, then the model, which frees its LoRA adapters with it
        self._loras = []

    def offloads(self) -> bool:
        """Whether layers of this model sit in a GPU's memory (a GPU build asked for any)."""
        return self.spec.gpu_layers != 0 and bool(llama_cpp.llama_supports_gpu_offload())

    def memory(self) -> dict[str, int]:
        # Read-only model figure: Status may ask while a generation runs on the context.
        return {"model_weights": int(llama_cpp.llama_model_size(self.llm.model))}

    def _apply_loras(self, loras: Sequence[tuple[str, float]]) -> None:
        if not loras:
            return
        for path, _ in loras:
            adapter = llama_cpp.llama_adapter_lora_init(self.llm.model, path.encode())
            if not adapter:
                raise BadInput(f"LoRA adapter {path!r} could not be loaded (not a GGUF LoRA for this model?)")
            self._loras.append(adapter)
        array = (llama_cpp.llama_adapter_lora_p_ctypes * len(self._loras))(*self._loras)
        scales = (ctypes.c_float * len(loras))(*(scale for _, scale in loras))
        if llama_cpp.llama_set_adapters_lora(self.llm.ctx, array, len(self._loras), scales):
            raise EngineFailure("llama.cpp refused to apply the LoRA adapters")

    # -- text ------------------------------------------------------------------------------------
    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        return self.vocab.tokenize(text, add_special=add_special)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self.vocab.detokenize(tokens)

    def render(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[Any] | None = None,
        tool_choice: Any = None,
        variables: dict[str, Any] | None = None,
    ) -> str:
        """The chat rendered with the model's template, ending with the assistant's turn opened."""
        return self.template.render(messages, tools=tools, tool_choice=tool_choice, variables=variables)

    def prompt(self, text: str, *, images: Sequence[bytes] = (), chat: bool = False) -> Prompt:
        """Tokenize a prompt and check it fits; images (encoded files) need the MMProj projector."""
        stop = self.template.stop if chat else ()
        decoded = tuple(images)
        if decoded and self._projector is None:
            raise BadInput(
                f"the request has {len(decoded)} image(s) but this model was loaded without a multimodal "
                "projector; set MMProj (mmproj: in the model config)"
            )
        self.vocab.check_size("the prompt", text, self.n_ctx)
        tokens = self.vocab.tokenize(text)
        if not tokens:
            raise BadInput("the prompt is empty: send Prompt, or Messages with UseTokenizerTemplate")
        if not decoded and len(tokens) >= self.n_ctx:
            raise BadInput(
                f"the prompt is {len(tokens)} tokens but the context holds {self.n_ctx} (ContextSize): "
                "shorten the prompt or load the model with a larger ContextSize"
            )
        return Prompt(tokens, text, decoded, reasoning_open=chat and opens_reasoning(text), stop=stop)

    # -- generation --------------------------------------------------------------------------------
    def check_grammar(self, grammar: str) -> None:
        """Raise BadInput when llama.cpp's GBNF parser rejects `grammar` (fast, before any work)."""
        sampler.check_grammar(self.vocab.pointer, grammar)

    def generate(self, prompt: Prompt, sampling: Sampling, stop: threading.Event) -> Iterator[Step]:
        """Token by token; the last Step has `finish` set. Stops early (no last Step) once `stop` is set."""
        native = self.native
        self._lower_priority()
        chooser = sampler.Sampler(native, self.vocab, sampling)
        stops = [s.encode() for s in (*sampling.stop, *prompt.stop) if s]
        held = b""
        produced = 0
        want_logprobs = sampling.logprobs or sampling.top_logprobs > 0
        try:
            started = time.perf_counter()
            if self.spec.embeddings:
                llama_cpp.llama_set_embeddings(self.llm.ctx, False)
            n_prompt = self._eval_prompt(prompt, sampling.cache_prompt)
            prompt_ms = (time.perf_counter() - started) * 1000
            generating = time.perf_counter()

            def step(text: bytes, logprobs: list[dict[str, Any]], finish: str | None) -> Step:
                elapsed = (time.perf_counter() - generating) * 1000
                return Step(text, logprobs, produced, n_prompt, prompt_ms, elapsed, finish)

            budget = self.n_ctx - native.n_tokens
            if sampling.max_tokens > 0:
                budget = min(budget, sampling.max_tokens)
            is_eog = llama_cpp.llama_vocab_is_eog
            vocab = self.vocab.pointer
            while not stop.is_set():
                token = chooser.sample()
                # A grammar finishes with end of text: that ends the reply even with IgnoreEOS.
                if is_eog(vocab, token) and (not sampling.ignore_eos or sampling.grammar):
                    yield step(held, [], "stop")
                    return
                produced += 1
                logprobs = [self._logprob(token, sampling.top_logprobs)] if want_logprobs else []
                held += self.vocab.piece(token)
                cut, stopped = release(held, stops)
                finish = "stop" if stopped else None
                if finish is None and produced >= budget:
                    cut, finish = len(held), "length"
                released, held = held[:cut], held[cut:]
                if finish is not None:
                    yield step(released, logprobs, finish)
                    return
                yield step(released, logprobs, None)
                if stop.is_set():
                    return
                native.eval_one(token)
        finally:
            chooser.close()
            if self.spec.embeddings:
                llama_cpp.llama_set_embeddings(self.llm.ctx, True)

    def _lower_priority(self) -> None:
        """With option nice:N, compute below the event loop (Health and the stream's sends go first).

        Linux applies nice per thread; llama.cpp's OpenMP workers inherit it from the thread that first
        computes, which is this one; a thread only ever goes lower. Off by default: on a machine shared
        with other busy processes, niced compute yields to all of them.
        """
        if self.spec.nice <= 0 or not hasattr(os, "setpriority"):
            return
        tid = threading.get_native_id()
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) < self.spec.nice:
                os.setpriority(os.PRIO_PROCESS, tid, self.spec.nice)
        except OSError:  # a sandbox that forbids it: compute at the process's priority
            pass

    def _eval_prompt(self, prompt: Prompt, cache_prompt: bool) -> int:
        """Evaluate the prompt into the context (reusing a cached prefix when asked); its token count."""
        if prompt.images:
            assert self._projector is not None  # prompt() refuses images without one
            return self._projector.evaluate(prompt, self.native, self.n_ctx)
        self.native.eval_prompt(prompt.tokens, cache_prompt)
        return len(prompt.tokens)

    def _logprob(self, token: int, top: int) -> dict[str, Any]:
        """OpenAI's shape for one sampled token, from the model's distribution (raw logits)."""
        logits = self.native.logits()
        peak = float(logits.max())
        lse = peak + math.log(float(np.exp(logits - peak).sum()))
        entry = self._token_entry(token, float(logits[token]) - lse)
        alternatives: list[dict[str, Any]] = []
        if top > 0:
            k = min(top, self.n_vocab)
            best = np.argpartition(-logits, k - 1)[:k]
            best = best[np.argsort(-logits[best], kind="stable")]
            alternatives = [self._token_entry(int(t), float(logits[t]) - lse) for t in best]
        entry["top_logprobs"] = alternatives
        return entry

    def _token_entry(self, token: int, logprob: float) -> dict[str, Any]:
        data = self.vocab.piece(token)
        return {
            "id": token,
            "token": data.decode("utf-8", errors="replace"),
            "logprob": logprob,
            "bytes": list(data),
        }

    # -- embeddings --------------------------------------------------------------------------------
    def embed(self, text: str, tokens: Sequence[int] = ()) -> tuple[list[float], int]:
        """One L2-normalised vector (the model's pooling, else the mean over tokens) and its token count."""
        limit = min(self.n_ctx, self.llm.n_batch)
        if not tokens:
            self.vocab.check_size("the text to embed", text, limit)
        ids = list(tokens) if tokens else self.vocab.tokenize(text)
        if not ids:
            raise BadInput("Embeddings is empty: send the text to embed")
        self.vocab.check_tokens("EmbeddingTokens", ids)
        if len(ids) > limit:
            raise BadInput(
                f"the text is {len(ids)} tokens but one embedding batch holds {limit} (the smaller of "
                "ContextSize and NBatch): shorten it or load the model with larger ones"
            )
        native = self.native
        ctx = self.llm.ctx
        self._lower_priority()
        native.clear()
        if not self.spec.embeddings:
            llama_cpp.llama_set_embeddings(ctx, True)
        try:
            native.decode_sequence(ids)
            if llama_cpp.llama_pooling_type(ctx) == llama_cpp.LLAMA_POOLING_TYPE_NONE:
                flat = np.ctypeslib.as_array(
                    llama_cpp.llama_get_embeddings(ctx), shape=(len(ids) * self.n_embd,)
                )
                vector = flat.reshape(len(ids), self.n_embd).mean(axis=0)
            else:
                pointer = llama_cpp.llama_get_embeddings_seq(ctx, 0)
                vector = np.ctypeslib.as_array(pointer, shape=(self.n_embd,)).copy()
        finally:
            if not self.spec.embeddings:
                llama_cpp.llama_set_embeddings(ctx, False)
            native.reset_batch()
            native.clear()
        norm = float(np.linalg.norm(vector))
        if norm > 0:
            vector = vector / norm
        return [float(v) for v in vector], len(ids)


def _threads(requested: int) -> int:
    """Requested threads, at most the CPUs this process may use (more only makes llama.cpp spin);
    0: all of them."""
    return cap_threads(requested) or usable()


def _cache_type(field_name: str, name: str) -> int | None:
    if not name:
        return None
    value = _CACHE_TYPES.get(name.lower())
    if value is None:
        known = ", ".join(
            sorted(
                k
                for k in _CACHE_TYPES
                if k in {"f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl"}
            )
        )
        raise BadInput(f"{field_name} {excerpt(name)} is not a llama.cpp cache type; use one of {known}")
    return value
