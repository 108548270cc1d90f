"""llama-cpp: GGUF text generation, chat templates, tool calls, embeddings and tokenization over llama.cpp.

A thin servicer over `engine.Engine` (llama-cpp-python, imported at LoadModel). One llama.cpp context
serves one sequence at a time, so `default_concurrency` is 1 and the runtime queues the rest in order.
Streams are generated token by token in a worker thread that checks the call's stop flag between
tokens: a cancelled or disconnected stream stops within one token and frees the context.
"""

from __future__ import annotations

import codecs
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from localfleet.backend import Backend, ModelRef, beside_model, lora_adapters
from localfleet.call import Call
from localfleet.errors import BackendError, BadInput
from localfleet.inputs import excerpt
from localfleet.llm import chat as chat_input
from localfleet.llm import limits
from localfleet.llm import sampling as llm_sampling
from localfleet.llm.chat_output import ChatReplies, Family
from localfleet.llm.images import read_images
from localfleet.llm.limits import bounded
from localfleet.llm.logprobs import LogprobsJson
from localfleet.options import BackendOptions
from localfleet.paths import PathPolicy
from localfleet.proto import backend_pb2 as pb
from localfleet_llama_cpp import bundled
from localfleet_llama_cpp.spec import LoadSpec, Prompt, Sampling, Step

if TYPE_CHECKING:
    from localfleet_llama_cpp.engine import Engine

GGUF_MAGIC = b"GGUF"
_FLASH = {"on": True, "true": True, "enabled": True, "1": True, "off": False, "false": False,
          "disabled": False, "0": False, "auto": False, "": False}  # fmt: skip
DEFAULT_CONTEXT = 4096  # core's own default, for a request without ContextSize


class LlamaOptions(BackendOptions):
    """LoadModel `Options` (`key:value`) beside the ModelOptions fields."""

    #: reuse the KV cache of the previous request's common prefix (per request: PromptCacheAll)
    cache_prompt: bool = False
    #: a Jinja chat template that replaces the GGUF's (for a GGUF without one, or a better one)
    chat_template: str | None = None
    #: tokens to generate when a request's `Tokens` is 0 (0: until the context is full, as llama.cpp)
    max_tokens: int = Field(0, ge=0)
    #: niceness of the compute threads (0: as the process). A higher value lets Health and the streams'
    #: sends preempt compute on a busy machine, but also lets every other process there starve it.
    nice: int = Field(0, ge=0, le=19)


@dataclass(frozen=True)
class Job:
    """A request made ready in a worker thread: what to feed, how to sample, how to read the output."""

    prompt: Prompt
    sampling: Sampling
    chat: bool
    family: Family
    tools: bool


class LlamaCpp(Backend):
    name = "llama-cpp"
    Options = LlamaOptions
    default_concurrency = 1  # one context, one sequence: the runtime's queue serves the rest in order
    loads_beside = True  # load() builds the new engine before it closes the old

    def __init__(self) -> None:
        self._engine: Engine | None = None
        self._options = LlamaOptions()

    # -- lifecycle -----------------------------------------------------------------------------
    def refuse(self, model: ModelRef) -> str | None:
        """Cheap checks before the runtime unloads the current model: a bad file never drops it."""
        path = model_path(model)
        if not os.path.exists(path):
            if bundled.installed(model.path):
                return None  # load() assembles it
            return f"model file not found: {path}{_extra_hint(model.path)}"
        if os.path.isdir(path):
            return f"{path} is a directory; llama-cpp loads one GGUF file"
        try:
            with open(path, "rb") as f:
                head = f.read(4)
        except OSError as exc:
            return f"cannot read {path}: {exc.strerror}"
        if head != GGUF_MAGIC:  # its bytes are never quoted: the file may be anything, a secret too
            return f"{path} is not a GGUF file (no GGUF magic at its start): point Model at a .gguf file"
        return None

    def load(self, model: ModelRef, options: BaseModel, request: pb.ModelOptions) -> str:
        from localfleet_llama_cpp.engine import Engine

        assert isinstance(options, LlamaOptions)
        path = model_path(model)
        if not os.path.exists(path) and bundled.installed(model.path):
            path = bundled.locate(model.path, model.model_dir)
        spec = LoadSpec(
            path=path,
            context_size=request.ContextSize if request.ContextSize > 0 else DEFAULT_CONTEXT,
            batch=request.NBatch if request.NBatch > 0 else 512,
            threads=request.Threads,
            gpu_layers=-1 if request.NGPULayers < 0 else request.NGPULayers,
            mmap=request.MMap,
            mlock=request.MLock,
            flash_attention=_flash_attention(request.FlashAttention),
            # F16Memory asks for an f16 KV cache, which is llama.cpp's default; CacheType* choose others.
            cache_type_k=request.CacheTypeKey or ("f16" if request.F16Memory else ""),
            cache_type_v=request.CacheTypeValue or ("f16" if request.F16Memory else ""),
            rope_freq_base=request.RopeFreqBase,
            rope_freq_scale=request.RopeFreqScale,
            embeddings=request.Embeddings,
            loras=lora_adapters(request, model.model_dir),
            mmproj=beside_model(request.MMProj, model.model_dir, "MMProj") if request.MMProj else "",
            chat_template=options.chat_template or "",
            nice=options.nice,
        )
        engine = Engine(spec)  # the serving engine stays in place until this one is built
        old, self._engine, self._options = self._engine, engine, options
        if old is not None:
            old.close()
        return engine.describe()

    def beside_refusal(self, model: ModelRef, request: pb.ModelOptions) -> str | None:
        engine = self._engine
        if engine is not None and engine.offloads():
            return "the model serving now is on a GPU, which rarely holds two"
        return super().beside_refusal(model, request)

    def working_bytes(self, model: ModelRef, request: pb.ModelOptions) -> int:
        from localfleet_llama_cpp.context import context_for, shape

        try:
            model_shape = shape(model_path(model))
        except (OSError, BackendError):
            return 0  # the load names what is wrong with the file
        asked = request.ContextSize if request.ContextSize > 0 else DEFAULT_CONTEXT
        return model_shape.kv_bytes(context_for(asked, model_shape.context, request.RopeFreqScale).tokens)

    def unload(self) -> str:
        engine, self._engine = self._engine, None
        if engine is None:
            return "no model loaded"
        engine.close()
        return f"unloaded {os.path.basename(engine.spec.path)}"

    def memory(self) -> dict[str, int]:
        engine = self._engine
        return engine.memory() if engine is not None else {}

    def engine(self) -> Engine:
        assert self._engine is not None  # the runtime admits requests only while a model is loaded
        return self._engine

    # -- generation ------------------------------------------------------------------------------
    async def Predict(self, request: pb.PredictOptions, call: Call) -> pb.Reply:
        engine = self.engine()
        job = await call.run(self._job, engine, request, call.paths)
        return await call.run(_complete, engine, job, call)

    async def PredictStream(self, request: pb.PredictOptions, call: Call) -> AsyncIterator[pb.Reply]:
        engine = self.engine()
        job = await call.run(self._job, engine, request, call.paths)
        replies = (
            ChatReplies(job.family, tools=job.tools, reasoning_open=job.prompt.reasoning_open)
            if job.chat
            else None
        )
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        logprobs = LogprobsJson()
        produced = 0
        async for step in call.iterate(engine.generate, job.prompt, job.sampling, call.stop):
            call.count_tokens(step.tokens - produced)
            produced = step.tokens
            reply = _reply(step.text, step)
            last = step.finish is not None
            reply.logprobs = logprobs.add(step.logprobs, last=last)
            if replies is not None:
                delta = replies.chunk(decoder.decode(step.text, final=last), last=last)
                if delta is not None:
                    reply.chat_deltas.append(delta)
            if last or reply.message or reply.logprobs or reply.chat_deltas:
                yield reply

    def _job(self, engine: Engine, request: pb.PredictOptions, paths: PathPolicy) -> Job:
        """Render, tokenize and check a request (worker thread): every bad input fails here, fast."""
        turn = chat_input.turn(request)
        if turn is not None:
            text = engine.render(
                turn.messages, tools=turn.tools, tool_choice=turn.tool_choice, variables=turn.variables
            )
        else:
            text = request.Prompt
        if request.Grammar:
            limits.check_grammar(request.Grammar)  # before llama.cpp's parser, which crashes on some
            engine.check_grammar(request.Grammar)
        if request.TopLogprobs < 0 or request.Logprobs < 0:
            raise BadInput("Logprobs and TopLogprobs must not be negative")
        base = llm_sampling.sampling(request, self._options.max_tokens)  # what every LLM backend checks
        chat = turn is not None
        prompt = engine.prompt(text, images=read_images(list(request.Images), paths), chat=chat)
        sampling = Sampling(
            temperature=base.temperature,
            top_k=base.top_k,
            top_p=base.top_p,
            min_p=base.min_p,
            typical_p=base.typical_p,
            repeat_penalty=base.repeat_penalty,
            # The penalty's window is allocated at this size: more than the context only wastes memory.
            repeat_last_n=engine.n_ctx if request.Repeat < 0 else min(request.Repeat or 64, engine.n_ctx),
            frequency_penalty=base.frequency_penalty,
            presence_penalty=base.presence_penalty,
            mirostat=request.Mirostat,
            mirostat_tau=bounded("MirostatTAU", request.MirostatTAU) or 5.0,
            mirostat_eta=bounded("MirostatETA", request.MirostatETA) or 0.1,
            seed=-1 if base.seed is None else base.seed,
            max_tokens=base.max_tokens,
            stop=base.stop,
            grammar=request.Grammar,
            ignore_eos=base.ignore_eos,
            logit_bias=limits.logit_bias(request.LogitBias, engine.n_vocab),
            logprobs=base.logprobs is not None,
            top_logprobs=base.logprobs or 0,
            cache_prompt=self._options.cache_prompt or request.PromptCacheAll,
        )
        return Job(prompt, sampling, chat, engine.family, bool(turn and turn.tools))

    # -- embeddings and tokens ----------------------------------------------------------------------
    async def Embedding(self, request: pb.PredictOptions, call: Call) -> pb.EmbeddingResult:
        engine = self.engine()
        text = request.Embeddings or request.Prompt
        vector, count = await call.run(engine.embed, text, list(request.EmbeddingTokens))
        return pb.EmbeddingResult(embeddings=vector, dim=len(vector), tokens=count, prompt_tokens=count)

    async def TokenizeString(self, request: pb.PredictOptions, call: Call) -> pb.TokenizationResponse:
        """Prompt's tokens as LocalAI's llama.cpp returns them (special tokens parsed, no BOS added); with
        UseTokenizerTemplate and Messages, exactly the tokens Predict would feed the model."""
        engine = self.engine()
        if request.UseTokenizerTemplate and request.Messages:
            job = await call.run(self._job, engine, request, call.paths)
            tokens = job.prompt.tokens
        else:
            tokens = await call.run(engine.tokenize, request.Prompt, add_special=False)
        return pb.TokenizationResponse(length=len(tokens), tokens=tokens)

    async def Detokenize(self, request: pb.DetokenizeRequest, call: Call) -> pb.DetokenizeResponse:
        engine = self.engine()
        return pb.DetokenizeResponse(content=await call.run(engine.detokenize, list(request.tokens)))


# -- helpers: proto in, plain values out --------------------------------------------------------------
def model_path(model: ModelRef) -> str:
    """ModelFile when it exists (the runtime's rule), else Model, relative to ModelPath when not absolute."""
    path = model.path
    if not os.path.isabs(path) and model.model_dir and not os.path.exists(path):
        path = os.path.join(model.model_dir, path)
    return path


def _extra_hint(path: str) -> str:
    if path in bundled.BUNDLED:
        return f" (the bundled {path} comes with the models extra: {bundled.EXTRA})"
    return ""


def _flash_attention(value: str) -> bool:
    key = value.strip().lower()
    if key not in _FLASH:
        raise BadInput(f"FlashAttention {excerpt(value)}: use on, off or auto")
    return _FLASH[key]


def _complete(engine: Engine, job: Job, call: Call) -> pb.Reply:
    """Predict in a worker thread, reply included (logprobs JSON and chat parsing stay off the loop)."""
    parts: list[bytes] = []
    logprobs = LogprobsJson()
    last = None
    produced = 0
    steps: Iterator[Step] = engine.generate(job.prompt, job.sampling, call.stop)
    for step in steps:
        call.count_tokens(step.tokens - produced)
        produced = step.tokens
        parts.append(step.text)
        logprobs.add(step.logprobs)
        last = step
    data = b"".join(parts)
    reply = _reply(data, last)
    reply.logprobs = logprobs.whole()
    if job.chat:
        replies = ChatReplies(job.family, tools=job.tools, reasoning_open=job.prompt.reasoning_open)
        message = replies.whole(data.decode("utf-8", errors="replace"))
        if message is not None:
            reply.chat_deltas.append(message)
    return reply


def _reply(text: bytes, step: Step | None) -> pb.Reply:
    if step is None:
        return pb.Reply(message=text)
    return pb.Reply(
        message=text,
        tokens=step.tokens,
        prompt_tokens=step.prompt_tokens,
        timing_prompt_processing=step.prompt_ms,
        timing_token_generation=step.generation_ms,
    )
