"""llama-cpp-python: the only module that imports it. Plain Python in and out, no protobuf.

One `Engine` holds one `llama_cpp.Llama` (one context, one sequence): the runtime runs one call at a time
on it (default_concurrency 1). Generation is our own token loop over the library's context and sampler
chain, the same steps as `Llama.generate`, so that each token can be handed out as soon as it is sampled,
a stop flag is checked between tokens, stop strings are cut at the byte, and logprobs are read from the
last logits without `logits_all`.
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import logging
import math
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import llama_cpp
import llama_cpp._internals as internals
import numpy as np
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from localfleet.cpus import cap_threads, usable
from localfleet.errors import BadInput, EngineFailure
from localfleet.inputs import excerpt
from localfleet.llm.chat import check_roles
from localfleet.llm.stops import release
from localfleet_llama_cpp.chat_output import family_of, opens_reasoning
from localfleet_llama_cpp.context import context_for, trained_context

log = logging.getLogger(__name__)

#: llama.cpp's own fallback when a GGUF carries no chat template: ChatML, here with Qwen2.5's tool block
#: so that tools still reach such a model (and its `<tool_call>` output is parsed).
CHATML_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n"
    "{% if messages[0].role == 'system' %}{{ messages[0].content }}\n\n{% endif %}"
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
    "{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
    "<args-json-object>}\n</tool_call><|im_end|>\n"
    "{% elif messages[0].role == 'system' %}<|im_start|>system\n{{ messages[0].content }}<|im_end|>\n"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if message.role == 'system' and loop.first %}"
    "{% elif message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant\n"
    "{% if message.content %}{{ message.content }}\n{% endif %}"
    "{% for call in message.tool_calls %}{% set fn = call.function if call.function else call %}"
    '<tool_call>\n{"name": "{{ fn.name }}", "arguments": '
    "{{ fn.arguments if fn.arguments is string else fn.arguments | tojson }}}\n</tool_call>"
    "{% endfor %}<|im_end|>\n"
    "{% elif message.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message.content }}\n"
    "</tool_response><|im_end|>\n"
    "{% else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CHATML_STOP = "<|im_end|>"

_RESERVED = frozenset(
    {"messages", "tools", "tool_choice", "functions", "function_call", "add_generation_prompt"}
)
_CACHE_TYPES = {
    name.removeprefix("GGML_TYPE_").lower(): value
    for name, value in vars(llama_cpp).items()
    if name.startswith("GGML_TYPE_") and name != "GGML_TYPE_COUNT" and isinstance(value, int)
}
_RANDOM_SEED = 0xFFFFFFFF  # llama.cpp draws a random seed for this value


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
        self._model = self.llm._model
        self._ctx = self.llm._ctx
        self.vocab = self._model.vocab
        self.n_ctx = self.llm.n_ctx()
        self.n_vocab = self.llm.n_vocab()
        self.n_embd = self.llm.n_embd()
        self._pieces: dict[int, bytes] = {}
        self._longest_piece = 0  # bytes of the vocabulary's longest token text, counted when first needed
        self._piece_buf = ctypes.create_string_buffer(256)
        self._eog: list[int] | None = None
        self._loras: list[Any] = []
        self._mtmd: Any = None
        self.template, self.fallback_template = self._chat_template()
        self.family = family_of(self.template)
        self._bos_text = self._token_text(self.llm.token_bos())
        self._add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        try:
            self._apply_loras(spec.loras)
            if spec.mmproj:
                self._mtmd = self._init_mtmd(spec.mmproj, threads)
        except BaseException:
            self.close()
            raise
        self._formatter = Jinja2ChatFormatter(
            template=self.template,
            eos_token=self._token_text(self.llm.token_eos()),
            bos_token=self._bos_text,
        )

    # -- lifecycle -----------------------------------------------------------------------------
    def describe(self) -> str:
        where = "GGUF template" if not self.fallback_template else "ChatML fallback (the GGUF has none)"
        if self.spec.chat_template:
            where = "chat_template option"
        return (
            f"{os.path.basename(self.spec.path)}: context {self.n_ctx}, vocab {self.n_vocab}, "
            f"chat template from {where} ({self.family.value} tool calls)"
            + (f", {len(self._loras)} LoRA adapter(s)" if self._loras else "")
            + (", multimodal projector" if self._mtmd is not None else "")
            + (f"; {self.context.note}" if self.context.note else "")
        )

    def close(self) -> None:
        if self._mtmd is not None:
            from llama_cpp import mtmd_cpp

            mtmd_cpp.mtmd_free(self._mtmd)
            self._mtmd = None
        self.llm.close()  # the context, then the model, which frees its LoRA adapters with it
        self._loras = []

    def offloads(self) -> bool:
        """Whether layers of this model sit in a GPU's memory (a GPU build asked for any)."""
        return self.spec.gpu_layers != 0 and bool(llama_cpp.llama_supports_gpu_offload())

    def memory(self) -> dict[str, int]:
        # Read-only model figure: Status may ask while a generation runs on the context.
        return {"model_weights": int(llama_cpp.llama_model_size(self._model.model))}

    def _apply_loras(self, loras: Sequence[tuple[str, float]]) -> None:
        if not loras:
            return
        for path, _ in loras:
            adapter = llama_cpp.llama_adapter_lora_init(self._model.model, path.encode())
            if not adapter:
                raise BadInput(f"LoRA adapter {path!r} could not be loaded (not a GGUF LoRA for this model?)")
            self._loras.append(adapter)
        array = (llama_cpp.llama_adapter_lora_p_ctypes * len(self._loras))(*self._loras)
        scales = (ctypes.c_float * len(loras))(*(scale for _, scale in loras))
        if llama_cpp.llama_set_adapters_lora(self._ctx.ctx, array, len(self._loras), scales):
            raise EngineFailure("llama.cpp refused to apply the LoRA adapters")

    def _init_mtmd(self, path: str, threads: int) -> Any:
        from llama_cpp import mtmd_cpp

        params = mtmd_cpp.mtmd_context_params_default()
        params.use_gpu = self.spec.gpu_layers != 0
        params.print_timings = False
        params.n_threads = threads
        ctx = mtmd_cpp.mtmd_init_from_file(path.encode(), self._model.model, params)
        if not ctx:
            raise BadInput(f"MMProj {path!r} could not be loaded as a multimodal projector for this model")
        return ctx

    # -- text ------------------------------------------------------------------------------------
    def _chat_template(self) -> tuple[str, bool]:
        if self.spec.chat_template:
            return self.spec.chat_template, False
        template = self.llm.metadata.get("tokenizer.chat_template", "")
        if template:
            return template, False
        return CHATML_TEMPLATE, True

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self._model.token_get_text(token)

    def piece(self, token: int) -> bytes:
        """The bytes one token stands for (special tokens render as nothing), cached per token."""
        cached = self._pieces.get(token)
        if cached is None:
            n = llama_cpp.llama_token_to_piece(self.vocab, token, self._piece_buf, 256, 0, False)
            cached = self._piece_buf.raw[: max(n, 0)]
            self._pieces[token] = cached
        return cached

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        # A template that writes the BOS itself gets no second one from the tokenizer.
        add_bos = add_special and self._add_bos and not (self._bos_text and text.startswith(self._bos_text))
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    def _check_tokens(self, field: str, tokens: Sequence[int]) -> None:
        """Token ids from a client must lie in the vocabulary: llama.cpp reads its tables at them."""
        for token in tokens:
            if not 0 <= token < self.n_vocab:
                raise BadInput(f"{field}: token {token} is outside the vocabulary (0..{self.n_vocab - 1})")

    def detokenize(self, tokens: Sequence[int]) -> str:
        self._check_tokens("tokens", tokens)
        # llama.cpp's own detokenizer: special tokens rendered, an SPM dummy-prefix space dropped.
        ids = (llama_cpp.llama_token * len(tokens))(*tokens)
        size = max(64, 8 * len(tokens))
        for _ in range(2):
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_detokenize(self.vocab, ids, len(tokens), buf, size, False, True)
            if n >= 0:
                return buf.raw[:n].decode("utf-8", errors="replace")
            size = -n
        raise EngineFailure(f"llama.cpp could not detokenize {len(tokens)} tokens")

    def render(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[Any] | None = None,
        tool_choice: Any = None,
        variables: dict[str, Any] | None = None,
    ) -> str:
        """The chat rendered with the model's template, ending with the assistant's turn opened."""
        check_roles(messages)
        extra = {k: v for k, v in (variables or {}).items() if k not in _RESERVED}
        try:
            rendered = self._formatter(
                messages=cast(Any, messages), tools=tools, tool_choice=tool_choice, **extra
            )
        except Exception as exc:  # jinja errors and the template's own raise_exception
            raise BadInput(f"the model's chat template rejected these Messages: {exc}") from None
        return rendered.prompt

    def prompt(self, text: str, *, images: Sequence[str] = (), chat: bool = False) -> Prompt:
        """Tokenize a prompt and check it fits; images are base64 (they need the MMProj projector)."""
        stop = (CHATML_STOP,) if chat and self.fallback_template else ()
        decoded = tuple(_image(i, raw) for i, raw in enumerate(images))
        if decoded and self._mtmd is None:
            raise BadInput(
                f"the request has {len(decoded)} image(s) but this model was loaded without a multimodal "
                "projector; set MMProj (mmproj: in the model config)"
            )
        self._check_size("the prompt", text, self.n_ctx)
        tokens = self.tokenize(text)
        if not tokens:
            raise BadInput("the prompt is empty: send Prompt, or Messages with UseTokenizerTemplate")
        if not decoded and len(tokens) >= self.n_ctx:
            raise BadInput(
                f"the prompt is {len(tokens)} tokens but the context holds {self.n_ctx} (ContextSize): "
                "shorten the prompt or load the model with a larger ContextSize"
            )
        return Prompt(tokens, text, decoded, reasoning_open=chat and opens_reasoning(text), stop=stop)

    def _check_size(self, what: str, text: str, room: int) -> None:
        """Refuse text too long for `room` tokens before tokenizing it: llama.cpp's tokenizer takes
        minutes over megabytes (20 MB of spaces: over 5 minutes), holding the model all along."""
        size = len(text.encode("utf-8", errors="surrogatepass"))
        if size <= room:  # no token stands for less than one byte: nothing to count
            return
        most = room * self._longest()
        if size > most:
            raise BadInput(
                f"{what} is {size} bytes, more than {room} tokens can hold ({most} bytes: at most "
                f"{self._longest()} a token for this model): shorten it or load the model with a larger "
                "ContextSize"
            )

    def _longest(self) -> int:
        """The most bytes one token stands for, special tokens' text included (counted once: ~0.7 s)."""
        if not self._longest_piece:
            buf = ctypes.create_string_buffer(1024)
            to_piece = llama_cpp.llama_token_to_piece
            pieces = (to_piece(self.vocab, t, buf, len(buf), 0, True) for t in range(self.n_vocab))
            self._longest_piece = max(pieces, default=1)
        return self._longest_piece

    # -- generation --------------------------------------------------------------------------------
    def check_grammar(self, grammar: str) -> None:
        """Raise BadInput when llama.cpp's GBNF parser rejects `grammar` (fast, before any work)."""
        llama_cpp.llama_sampler_free(self._grammar_sampler(grammar))

    def _grammar_sampler(self, grammar: str) -> Any:
        sampler = llama_cpp.llama_sampler_init_grammar(self.vocab, grammar.encode(), b"root")
        if not sampler:
            raise BadInput(
                "Grammar is not valid GBNF (llama.cpp's grammar parser rejected it, or it has no 'root' "
                "rule); the backend log names the position"
            )
        return sampler

    def _sampler(self, s: Sampling) -> tuple[internals.LlamaSampler, Any]:
        """The same chain as llama-cpp-python's `Llama._init_sampler`, plus logit bias and ignore_eos;
        and, apart from it, the grammar sampler (None without a grammar), which the caller frees."""
        chain = internals.LlamaSampler()  # type: ignore[no-untyped-call]
        grammar = None
        bias = dict(s.logit_bias)
        if s.ignore_eos and not s.grammar:  # with a grammar, end of text is how the grammar finishes
            bias.update(dict.fromkeys(self.eog_tokens(), -math.inf))
        if bias:
            chain.add_logit_bias(self.n_vocab, bias)
        chain.add_penalties(
            n_vocab=self.n_vocab,
            penalty_last_n=s.repeat_last_n,
            penalty_repeat=s.repeat_penalty,
            penalty_freq=s.frequency_penalty,
            penalty_present=s.presence_penalty,
        )
        if s.grammar:
            grammar = self._grammar_sampler(s.grammar)  # apart from the chain: see _sample
        seed = _RANDOM_SEED if s.seed < 0 else s.seed & 0xFFFFFFFF
        if s.temperature <= 0.0:
            chain.add_greedy()  # type: ignore[no-untyped-call]
        elif s.mirostat == 1:
            chain.add_mirostat(self.n_vocab, seed, s.mirostat_tau, s.mirostat_eta, 100)
        elif s.mirostat == 2:
            chain.add_mirostat_v2(seed, s.mirostat_tau, s.mirostat_eta)
        else:
            chain.add_top_k(s.top_k)
            chain.add_typical(s.typical_p, 1)
            chain.add_top_p(s.top_p, 1)
            chain.add_min_p(s.min_p, 1)
            chain.add_temp(s.temperature)
            chain.add_dist(seed)
        return chain, grammar

    def _sample(self, chain: internals.LlamaSampler, grammar: Any, candidates: Any) -> int:
        """The next token. With a grammar, as llama.cpp's own server samples: by the chain alone, and the
        grammar asked about that one token; only when it refuses it is the grammar applied to the whole
        vocabulary (its costly step: every candidate against every parse) and the chain run again.

        The grammar's verdict on the final token is checked before it is accepted: when a grammar allows
        no token at all (an empty range such as [z-a], a code point past U+10FFFF, a token id outside the
        vocabulary), the chain still picks one, and llama.cpp's grammar aborts the process on it."""
        if grammar is None:
            return int(chain.sample(self._ctx, -1))
        logits = np.ctypeslib.as_array(self._ctx.get_logits_ith(-1), shape=(self.n_vocab,))
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

    def eog_tokens(self) -> list[int]:
        if self._eog is None:
            is_eog = llama_cpp.llama_vocab_is_eog
            self._eog = [t for t in range(self.n_vocab) if is_eog(self.vocab, t)]
        return self._eog

    def generate(self, prompt: Prompt, sampling: Sampling, stop: threading.Event) -> Iterator[Step]:
        """Token by token; the last Step has `finish` set. Stops early (no last Step) once `stop` is set."""
        llm = self.llm
        self._lower_priority()
        sampler, grammar = self._sampler(sampling)
        candidates = internals.LlamaTokenDataArray(n_vocab=self.n_vocab) if grammar else None
        stops = [s.encode() for s in (*sampling.stop, *prompt.stop) if s]
        held = b""
        produced = 0
        want_logprobs = sampling.logprobs or sampling.top_logprobs > 0
        try:
            started = time.perf_counter()
            if self.spec.embeddings:
                llama_cpp.llama_set_embeddings(self._ctx.ctx, False)
            n_prompt = self._eval_prompt(prompt, sampling.cache_prompt)
            prompt_ms = (time.perf_counter() - started) * 1000
            generating = time.perf_counter()

            def step(text: bytes, logprobs: list[dict[str, Any]], finish: str | None) -> Step:
                elapsed = (time.perf_counter() - generating) * 1000
                return Step(text, logprobs, produced, n_prompt, prompt_ms, elapsed, finish)

            budget = self.n_ctx - llm.n_tokens
            if sampling.max_tokens > 0:
                budget = min(budget, sampling.max_tokens)
            is_eog = llama_cpp.llama_vocab_is_eog
            while not stop.is_set():
                token = self._sample(sampler, grammar, candidates)
                # A grammar finishes with end of text: that ends the reply even with IgnoreEOS.
                if is_eog(self.vocab, token) and (not sampling.ignore_eos or sampling.grammar):
                    yield step(held, [], "stop")
                    return
                produced += 1
                logprobs = [self._logprob(token, sampling.top_logprobs)] if want_logprobs else []
                held += self.piece(token)
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
                self._eval_one(token)
        finally:
            sampler.close()  # type: ignore[no-untyped-call]
            if grammar is not None:
                llama_cpp.llama_sampler_free(grammar)
            if self.spec.embeddings:
                llama_cpp.llama_set_embeddings(self._ctx.ctx, True)

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

    def _eval_one(self, token: int) -> None:
        """`Llama.eval([token])` without its KV trim (nothing lies past the end while generating).

        Its only call into llama.cpp is the decode: the one point where this thread gives up the GIL,
        so the event loop sends the last token while the next one computes, not in between.
        """
        llm = self.llm
        batch = llm._batch
        batch.set_batch([token], n_past=llm.n_tokens, logits_all=False)
        try:
            self._ctx.decode(batch)
        except RuntimeError as exc:
            raise EngineFailure(f"llama.cpp could not evaluate a generated token: {exc}") from None
        llm.input_ids[llm.n_tokens] = token
        llm.n_tokens += 1
        llm._requires_eval = False

    def _clear(self) -> None:
        """Forget the context's tokens (the next prompt is evaluated from its start)."""
        self.llm.reset()  # type: ignore[no-untyped-call]
        self._ctx.kv_cache_clear()  # type: ignore[no-untyped-call]

    def _eval_prompt(self, prompt: Prompt, cache_prompt: bool) -> int:
        """Evaluate the prompt into the context (reusing a cached prefix when asked); its token count."""
        llm = self.llm
        if prompt.images:
            return self._eval_media(prompt)
        tokens = prompt.tokens
        keep = 0
        if cache_prompt and llm.n_tokens > 0:
            for a, b in zip(llm._input_ids, tokens, strict=False):
                if a != b:
                    break
                keep += 1
            keep = min(keep, len(tokens) - 1)  # evaluate at least one token: its logits start the reply
        if keep > 0 and self._ctx.kv_cache_seq_rm(-1, keep, -1):
            llm.n_tokens = keep
        else:
            self._clear()
        try:
            llm.eval(tokens[llm.n_tokens :])
        except RuntimeError as exc:
            self._clear()
            raise EngineFailure(f"llama.cpp could not evaluate the prompt: {exc}") from None
        return len(tokens)

    def _eval_media(self, prompt: Prompt) -> int:
        """Text with media markers plus images, through libmtmd (as llama-cpp-python's MTMD handler)."""
        from llama_cpp import mtmd_cpp

        llm = self.llm
        marker = mtmd_cpp.mtmd_default_marker().decode()
        text = prompt.text
        missing = len(prompt.images) - text.count(marker)
        if missing > 0:  # LocalAI puts markers in the prompt; a bare prompt gets them in front
            text = marker * missing + text
        bitmaps = []
        chunks = None
        try:
            for data in prompt.images:
                buf = (ctypes.c_uint8 * len(data)).from_buffer(bytearray(data))
                bitmap = mtmd_cpp.mtmd_helper_bitmap_init_from_buf(self._mtmd, buf, len(data), False)
                if not bitmap:
                    raise BadInput("an image in Images could not be decoded (send PNG, JPEG or BMP, base64)")
                bitmaps.append(bitmap)
            encoded = text.encode()
            input_text = mtmd_cpp.mtmd_input_text()
            input_text.text = encoded
            input_text.text_len = len(encoded)
            input_text.add_special = True
            input_text.parse_special = True
            chunks = mtmd_cpp.mtmd_input_chunks_init()
            array = (mtmd_cpp.mtmd_bitmap_p_ctypes * len(bitmaps))(*bitmaps)
            if mtmd_cpp.mtmd_tokenize(self._mtmd, chunks, ctypes.byref(input_text), array, len(bitmaps)):
                raise BadInput("the prompt's media markers do not match its images")
            total = sum(
                mtmd_cpp.mtmd_input_chunk_get_n_tokens(mtmd_cpp.mtmd_input_chunks_get(chunks, i))
                for i in range(mtmd_cpp.mtmd_input_chunks_size(chunks))
            )
            if total >= self.n_ctx:
                raise BadInput(
                    f"the prompt is {total} tokens with its images but the context holds {self.n_ctx} "
                    "(ContextSize): shorten it or load the model with a larger ContextSize"
                )
            self._clear()
            new_past = llama_cpp.llama_pos(0)
            if mtmd_cpp.mtmd_helper_eval_chunks(
                self._mtmd, self._ctx.ctx, chunks, 0, 0, llm.n_batch, True, ctypes.byref(new_past)
            ):
                raise EngineFailure("llama.cpp could not evaluate the prompt with its images")
            llm.n_tokens = new_past.value
            llm.input_ids[: llm.n_tokens] = -1  # image positions: no later prompt may reuse them as text
            return int(total)
        finally:
            if chunks is not None:
                mtmd_cpp.mtmd_input_chunks_free(chunks)
            for bitmap in bitmaps:
                mtmd_cpp.mtmd_bitmap_free(bitmap)

    def _logprob(self, token: int, top: int) -> dict[str, Any]:
        """OpenAI's shape for one sampled token, from the model's distribution (raw logits)."""
        logits = np.ctypeslib.as_array(self._ctx.get_logits_ith(-1), shape=(self.n_vocab,))
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
        data = self.piece(token)
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
            self._check_size("the text to embed", text, limit)
        ids = list(tokens) if tokens else self.tokenize(text)
        if not ids:
            raise BadInput("Embeddings is empty: send the text to embed")
        self._check_tokens("EmbeddingTokens", ids)
        if len(ids) > limit:
            raise BadInput(
                f"the text is {len(ids)} tokens but one embedding batch holds {limit} (the smaller of "
                "ContextSize and NBatch): shorten it or load the model with larger ones"
            )
        llm = self.llm
        ctx = self._ctx.ctx
        self._lower_priority()
        self._clear()
        if not self.spec.embeddings:
            llama_cpp.llama_set_embeddings(ctx, True)
        try:
            batch = llm._batch
            batch.reset()  # type: ignore[no-untyped-call]
            batch.add_sequence(ids, 0, True)
            self._ctx.decode(batch)
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
            llm._batch.reset()  # type: ignore[no-untyped-call]
            self._clear()
        norm = float(np.linalg.norm(vector))
        if norm > 0:
            vector = vector / norm
        return [float(v) for v in vector], len(ids)


def _pick(chain: internals.LlamaSampler, candidates: Any, logits: Any, grammar: Any = None) -> int:
    """The token the chain selects from `logits`, after `grammar` filters them when one is given."""
    candidates.copy_logits(logits)
    array = candidates.candidates
    array.selected = -1
    if grammar is not None:
        llama_cpp.llama_sampler_apply(grammar, ctypes.byref(array))
    llama_cpp.llama_sampler_apply(chain.sampler, ctypes.byref(array))
    if not 0 <= array.selected < array.size:
        raise EngineFailure("llama.cpp's samplers selected no token")
    return int(array.data[array.selected].id)


def _allows(grammar: Any, token: int) -> bool:
    """Whether `grammar` (a llama.cpp grammar sampler, in its current state) accepts `token` next."""
    one = (llama_cpp.llama_token_data * 1)(llama_cpp.llama_token_data(token, 0.0, 0.0))
    array = llama_cpp.llama_token_data_array(data=one, size=1, selected=-1, sorted=False)
    llama_cpp.llama_sampler_apply(grammar, ctypes.byref(array))
    return math.isfinite(one[0].logit)


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


def _image(index: int, raw: str) -> bytes:
    data = raw.split(",", 1)[1] if raw.startswith("data:") else raw
    try:
        return base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError):
        raise BadInput(f"Images[{index}] is not base64") from None
