"""huggingface: LocalAI's Predict, PredictStream and Embedding answered by a remote inference endpoint.

Model is the endpoint: the URL of an OpenAI-compatible server (TGI, vLLM, llama.cpp's server, an
Inference Endpoint; `/v1` routes) or a model id on Hugging Face's inference providers. The token comes
from HUGGINGFACEHUB_API_TOKEN (or the variable the `token_env` option names) and is never logged or
echoed. The remote does the batching: many calls run at once here.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from localfleet import hub
from localfleet.backend import Backend, ModelRef
from localfleet.call import Call
from localfleet.errors import BadInput, NotLoaded
from localfleet.llm import chat as chat_input
from localfleet.llm import limits
from localfleet.options import BackendOptions
from localfleet.proto import backend_pb2 as pb

if TYPE_CHECKING:
    from localfleet_huggingface.remote import Chunk, Remote

#: a Hugging Face model id: org/name (letters, digits, - _ .)
_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")
TOKEN_ENV = "HUGGINGFACEHUB_API_TOKEN"


class HuggingFaceOptions(BackendOptions):
    api: Literal["auto", "openai", "hf"] = Field(
        "auto",
        description="openai: an OpenAI-compatible server at a URL; hf: a model id on Hugging "
        "Face's inference providers; auto: openai for a URL, hf for a model id",
    )
    model_name: str = Field("", description="the model name sent to an OpenAI server (default: its own)")
    token_env: str = Field(TOKEN_ENV, description="the environment variable holding the API token")
    timeout: float = Field(120.0, gt=0, le=3600, description="seconds one HTTP request may take")
    max_tokens: int = Field(512, ge=1, description="tokens generated when a request sends no Tokens")


class HuggingFace(Backend):
    name = "huggingface"
    Options = HuggingFaceOptions
    default_concurrency = 64  # the endpoint batches; a call here only waits on HTTP

    def __init__(self) -> None:
        self._remote: Remote | None = None
        self._options = HuggingFaceOptions()

    # -- lifecycle -----------------------------------------------------------------------------
    def refuse(self, model: ModelRef) -> str | None:
        name = model.name
        if name.startswith(("http://", "https://")) or _MODEL_ID.fullmatch(name):
            return None
        return (
            "this backend calls a remote endpoint: Model is its URL (http://host:port of an "
            "OpenAI-compatible server) or a Hugging Face model id (org/name)"
        )

    def load(self, model: ModelRef, options: BaseModel, request: pb.ModelOptions) -> str:
        from localfleet_huggingface.remote import Endpoint, Remote

        assert isinstance(options, HuggingFaceOptions)
        if hub.offline():  # huggingface_hub then refuses every HTTP call, an explicit endpoint's too
            raise BadInput(
                "HF_HUB_OFFLINE is set in this backend's environment, and huggingface_hub then makes no "
                "HTTP calls at all, not even to the endpoint: unset it for the huggingface backend"
            )
        is_url = model.name.startswith(("http://", "https://"))
        api = options.api if options.api != "auto" else ("openai" if is_url else "hf")
        if api == "openai" and not is_url:
            raise BadInput("api openai needs Model to be the server's URL (http://host:port)")
        token = os.environ.get(options.token_env) or None
        endpoint = Endpoint(
            api=api,
            url=model.name.rstrip("/").removesuffix("/v1") if is_url else "",
            model=options.model_name if is_url else model.name,
            token=token,
            timeout=options.timeout,
        )
        remote = Remote(endpoint)
        remote.probe()  # an endpoint that cannot be reached fails the load, naming it
        self._remote, self._options = remote, options
        with_token = "with a token" if token else f"without a token ({options.token_env} is not set)"
        return f"{api} endpoint {endpoint.shown}, {with_token}"

    def unload(self) -> str:
        remote, self._remote = self._remote, None
        if remote is None:
            return "no endpoint"
        remote.release()
        return f"released {remote.endpoint.shown}"

    def unable(self) -> str | None:
        remote = self._remote
        return remote.last_failure if remote is not None else None

    def _loaded(self) -> Remote:
        if self._remote is None:
            raise NotLoaded()
        return self._remote

    # -- calls -------------------------------------------------------------------------------------
    async def Predict(self, request: pb.PredictOptions, call: Call) -> pb.Reply:
        reply = pb.Reply()
        text: list[str] = []
        calls: dict[int, dict[str, str]] = {}
        logprobs: list[dict[str, Any]] = []
        async for chunk in self._stream(request, call):
            text.append(chunk.text)
            _merge_calls(calls, chunk.tool_calls)
            logprobs.extend(chunk.logprobs)
            reply.prompt_tokens = chunk.prompt_tokens or reply.prompt_tokens
            reply.tokens = chunk.tokens or reply.tokens
        reply.message = "".join(text).encode()
        if calls or request.UseTokenizerTemplate:
            reply.chat_deltas.append(_delta("".join(text), list(calls.values())))
        if logprobs:
            reply.logprobs = json.dumps({"content": logprobs}).encode()
        return reply

    async def PredictStream(self, request: pb.PredictOptions, call: Call) -> AsyncIterator[pb.Reply]:
        async for chunk in self._stream(request, call):
            if not (chunk.text or chunk.tool_calls or chunk.tokens or chunk.finish):
                continue
            reply = pb.Reply(
                message=chunk.text.encode(), tokens=chunk.tokens, prompt_tokens=chunk.prompt_tokens
            )
            if chunk.text or chunk.tool_calls:
                reply.chat_deltas.append(_delta(chunk.text, chunk.tool_calls))
            if chunk.logprobs:
                reply.logprobs = json.dumps({"content": chunk.logprobs}).encode()
            yield reply

    async def Embedding(self, request: pb.PredictOptions, call: Call) -> pb.EmbeddingResult:
        text = request.Embeddings or request.Prompt
        if not text.strip():
            raise BadInput("Embeddings is empty: send the text to embed")
        vector = await self._loaded().embed(text)
        return pb.EmbeddingResult(embeddings=vector)

    async def _stream(self, request: pb.PredictOptions, call: Call) -> AsyncIterator[Chunk]:
        remote = self._loaded()
        params = _params(request, self._options.max_tokens)
        if request.UseTokenizerTemplate and request.Messages:
            tools = chat_input.tools(request.Tools)
            choice = chat_input.tool_choice(request.ToolChoice)
            if tools:
                params["tools"] = tools
                if choice is not None:
                    params["tool_choice"] = choice
            source = remote.chat(chat_input.messages(request), params)
        elif request.Prompt:
            source = remote.complete(request.Prompt, params)
        else:
            raise BadInput("the request is empty: send Prompt, or Messages with UseTokenizerTemplate")
        # Usage comes in the last chunk where the endpoint honours include_usage; llama.cpp's server does
        # not, and streams one token a chunk, so until usage arrives the chunks with text are counted.
        counted = 0
        reported = False
        async for chunk in source:
            if chunk.tokens:
                reported = True
            elif not reported and (chunk.text or chunk.tool_calls):
                chunk.tokens = counted + 1
            call.count_tokens(max(chunk.tokens - counted, 0))
            counted = max(counted, chunk.tokens)
            yield chunk


def _params(request: pb.PredictOptions, default_tokens: int) -> dict[str, Any]:
    """PredictOptions in OpenAI's names; what is unset is left to the endpoint."""
    if request.Tokens < 0:
        raise BadInput(f"Tokens must be >= 0 (0 = the backend default), got {request.Tokens}")
    if request.Grammar:
        raise BadInput("Grammar is not supported by remote endpoints here; send a JSON schema in Tools")
    limits.check_stop_prompts(list(request.StopPrompts))
    params: dict[str, Any] = {
        "max_tokens": request.Tokens or default_tokens,
        "temperature": limits.temperature(request.Temperature),
    }
    if 0 < request.TopP <= 1:
        params["top_p"] = request.TopP
    if request.Seed:
        params["seed"] = request.Seed
    if request.StopPrompts:
        params["stop"] = list(request.StopPrompts)
    for field, name in (("FrequencyPenalty", "frequency_penalty"), ("PresencePenalty", "presence_penalty")):
        if value := limits.bounded(field, getattr(request, field)):
            params[name] = value
    if request.Logprobs < 0 or request.TopLogprobs < 0:
        raise BadInput("Logprobs and TopLogprobs must not be negative")
    if request.Logprobs or request.TopLogprobs:
        params["logprobs"] = True
        if request.TopLogprobs:
            params["top_logprobs"] = request.TopLogprobs
    return params


def _merge_calls(calls: dict[int, dict[str, str]], deltas: list[dict[str, Any]]) -> None:
    """Streamed tool-call pieces joined per index (OpenAI sends a call's arguments in fragments)."""
    for delta in deltas:
        held = calls.setdefault(
            delta["index"], {"index": delta["index"], "id": "", "name": "", "arguments": ""}
        )
        held["id"] = held["id"] or delta["id"]
        held["name"] = held["name"] or delta["name"]
        held["arguments"] += delta["arguments"]


def _delta(text: str, calls: list[dict[str, Any]]) -> pb.ChatDelta:
    return pb.ChatDelta(
        content=text,
        tool_calls=[
            pb.ToolCallDelta(index=c["index"], id=c["id"], name=c["name"], arguments=c["arguments"])
            for c in calls
        ],
    )
