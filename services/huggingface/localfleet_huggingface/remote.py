"""The remote engine: an inference endpoint over HTTP, through huggingface_hub's AsyncInferenceClient.

The only module that imports huggingface_hub and httpx2 (its HTTP client). Plain Python in and out.
Two APIs: "openai" for any OpenAI-compatible server (TGI, vLLM, llama.cpp's server, Inference Endpoints)
given by URL, and "hf" for a model id on Hugging Face's inference providers. Chat goes through the
client's chat_completion on both; a raw prompt and embeddings on an OpenAI server go to its
/v1/completions and /v1/embeddings, which the client has no method for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx2
from huggingface_hub import AsyncInferenceClient, ChatCompletionInputStreamOptions
from huggingface_hub.errors import HfHubHTTPError

from localfleet.errors import (
    BackendError,
    BadInput,
    NotFound,
    Overloaded,
    TimedOut,
    Unauthenticated,
    Unavailable,
)
from localfleet.inputs import excerpt

#: how long a reachability probe at LoadModel waits
PROBE_SECONDS = 5.0
CLOSE_SECONDS = 5.0  # how long an unload waits for the clients to close


@dataclass(frozen=True)
class Endpoint:
    api: str  # "openai" or "hf"
    url: str  # base URL (openai), or "" for Hugging Face's router (hf)
    model: str  # the model name sent with each request ("" lets an OpenAI server use its own)
    token: str | None = field(repr=False)  # never printed
    timeout: float = 120.0

    @property
    def shown(self) -> str:
        return self.url or f"Hugging Face inference for {self.model}"


@dataclass
class Chunk:
    """Text as it arrives, and the counts and tool calls the endpoint reports."""

    text: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    prompt_tokens: int = 0
    tokens: int = 0
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    finish: str | None = None


class Remote:
    """One endpoint; its HTTP clients live on the event loop that first uses them."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._client: AsyncInferenceClient | None = None
        self._http: httpx2.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # where the clients were made
        self.last_failure: str | None = None  # the endpoint's state as the last call found it

    def probe(self) -> None:
        """Raise Unavailable (blocking) when the endpoint cannot be reached: LoadModel fails at once."""
        url = (
            f"{self.endpoint.url}/v1/models"
            if self.endpoint.api == "openai"
            else "https://router.huggingface.co"
        )
        try:
            answer = httpx2.get(url, headers=self._headers(), timeout=PROBE_SECONDS)
        except httpx2.HTTPError as exc:
            raise _failure(exc, self.endpoint) from None
        if answer.status_code in (401, 403):  # other answers (a server without /v1/models) are fine
            raise _refusal(answer.status_code, answer, self.endpoint.shown)

    def release(self, wait: float = CLOSE_SECONDS) -> None:
        """Close the clients from any thread (unload runs in a worker): on the loop that owns them, so
        their pooled connections are shut, not left to the garbage collector."""
        loop = self._loop
        if loop is None or loop.is_closed() or (self._client is None and self._http is None):
            return
        done = asyncio.run_coroutine_threadsafe(self.close(), loop)
        with contextlib.suppress(Exception):  # a close that fails or hangs must not fail the unload
            done.result(wait)

    async def close(self) -> None:
        client, http, self._client, self._http = self._client, self._http, None, None
        if client is not None:
            await client.close()  # type: ignore[no-untyped-call]  # huggingface_hub leaves it unannotated
        if http is not None:
            await http.aclose()

    # -- calls -------------------------------------------------------------------------------------
    async def chat(self, messages: list[dict[str, Any]], params: dict[str, Any]) -> AsyncIterator[Chunk]:
        """Chat completion, streamed; `params` in OpenAI's names."""
        async with self._calling():
            chat: list[Any] = list(messages)  # plain dicts, which the client takes as its message type
            stream = await self._inference().chat_completion(
                chat,
                model=self.endpoint.model or None,
                stream=True,
                stream_options=ChatCompletionInputStreamOptions(include_usage=True),
                **params,
            )
            try:
                finished = False
                async for event in stream:
                    chunk = _chat_chunk(event)
                    finished = finished or chunk.finish is not None
                    yield chunk
                self._check_finished(finished)
            finally:
                closing = getattr(stream, "aclose", None)
                if closing is not None:  # the HTTP stream ends with the call, cancelled or not
                    await closing()

    async def complete(self, prompt: str, params: dict[str, Any]) -> AsyncIterator[Chunk]:
        """A raw prompt: OpenAI's /v1/completions, streamed (server-sent events)."""
        if self.endpoint.api != "openai":
            raise BadInput(
                "a raw Prompt needs an OpenAI-compatible endpoint (api: openai); Hugging Face's inference "
                "providers take chat: send Messages with UseTokenizerTemplate"
            )
        usage = {"stream_options": {"include_usage": True}}
        body = {"prompt": prompt, "stream": True, **usage, **params, **self._model_field()}
        http = self._client_http()
        async with self._calling(), http.stream("POST", "/v1/completions", json=body) as response:
            await _raise_for_status(response)
            finished = False
            async for line in response.aiter_lines():
                data = line.removeprefix("data:").strip() if line.startswith("data:") else ""
                if not data or data == "[DONE]":
                    continue
                chunk = _completion_chunk(json.loads(data))
                finished = finished or chunk.finish is not None
                yield chunk
            self._check_finished(finished)

    async def embed(self, text: str) -> list[float]:
        async with self._calling():
            if self.endpoint.api == "hf":
                vector = await self._inference().feature_extraction(text, model=self.endpoint.model)
                return [float(v) for v in vector.reshape(-1)]
            body = {"input": text, **self._model_field()}
            response = await self._client_http().post("/v1/embeddings", json=body)
            await _raise_for_status(response)
            return _pooled(response.json())

    # -- plumbing ----------------------------------------------------------------------------------
    def _check_finished(self, finished: bool) -> None:
        """A stream that ends without a finish reason was cut (the endpoint died or a proxy closed it):
        the client must hear so, not take the text so far for the whole reply."""
        if not finished:
            raise Unavailable(
                f"{self.endpoint.shown} cannot be reached: its stream ended before the reply was complete "
                "(no finish reason); retry"
            )

    def _model_field(self) -> dict[str, str]:
        return {"model": self.endpoint.model} if self.endpoint.model else {}

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.endpoint.token}"} if self.endpoint.token else {}

    def _inference(self) -> AsyncInferenceClient:
        if self._client is None:
            self._loop = asyncio.get_running_loop()
            base = self.endpoint.url or None
            self._client = AsyncInferenceClient(
                model=None if base else self.endpoint.model,
                base_url=base,
                api_key=self.endpoint.token,
                timeout=self.endpoint.timeout,
            )
        return self._client

    def _client_http(self) -> httpx2.AsyncClient:
        if self._http is None:
            self._loop = asyncio.get_running_loop()
            self._http = httpx2.AsyncClient(
                base_url=self.endpoint.url, headers=self._headers(), timeout=self.endpoint.timeout
            )
        return self._http

    def _calling(self) -> _Calling:
        return _Calling(self)


class _Calling:
    """Around one call: the endpoint's failures as statuses, and its state for Status."""

    def __init__(self, remote: Remote) -> None:
        self.remote = remote

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            self.remote.last_failure = None
            return
        if isinstance(exc, BackendError | HfHubHTTPError | httpx2.HTTPError):
            failure = exc if isinstance(exc, BackendError) else _failure(exc, self.remote.endpoint)
            if isinstance(failure, Unavailable | TimedOut):
                self.remote.last_failure = str(failure)
            elif not isinstance(failure, BadInput):
                self.remote.last_failure = None  # it answered
            if failure is not exc:
                raise failure from None


async def _raise_for_status(response: httpx2.Response) -> None:
    if response.status_code >= 400:
        await response.aread()
        response.raise_for_status()


def _failure(exc: BaseException, endpoint: Endpoint) -> BackendError:
    """A failure of the endpoint as the status the client should see, naming the endpoint."""
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None) if response is not None else None
    if isinstance(status, int):
        return _refusal(status, response, endpoint.shown)
    if isinstance(exc, httpx2.TimeoutException):
        return TimedOut(
            f"{endpoint.shown} did not answer in time ({type(exc).__name__}); raise the timeout option"
        )
    return Unavailable(
        f"{endpoint.shown} cannot be reached ({type(exc).__name__}: {excerpt(str(exc), 120)}); is it running?"
    )


def _refusal(status: int, response: Any, where: str) -> BackendError:
    """An HTTP error status from the endpoint as ours."""
    said = _said(response)
    if status in (401, 403):
        return Unauthenticated(
            f"{where} refused the credentials (HTTP {status}){said}: set HUGGINGFACEHUB_API_TOKEN "
            "(or the variable the token_env option names) to a valid token"
        )
    if status == 429:
        after = response.headers.get("retry-after", "")
        wait = f"; retry after {after.strip()[:20]} s" if after else ""
        return Overloaded(f"{where} is rate limiting requests (HTTP 429){wait}{said}")
    if status == 404:
        return NotFound(f"{where} has no such model or route (HTTP 404){said}")
    if status >= 500:
        return Unavailable(f"{where} failed (HTTP {status}){said}; retry, or check the endpoint's logs")
    return BadInput(f"{where} refused the request (HTTP {status}){said}")


def _said(response: Any) -> str:
    try:
        text = response.text
    except Exception:  # a streamed body not read: nothing to quote
        return ""
    return f": {excerpt(text, 160)}" if text else ""


def _chat_chunk(event: Any) -> Chunk:
    chunk = Chunk()
    usage = getattr(event, "usage", None)
    if usage is not None:
        chunk.prompt_tokens = int(usage.prompt_tokens or 0)
        chunk.tokens = int(usage.completion_tokens or 0)
    for choice in getattr(event, "choices", None) or []:
        delta = choice.delta
        chunk.text += delta.content or ""
        for call in delta.tool_calls or []:
            function = call.function
            chunk.tool_calls.append(
                {
                    "index": int(call.index or 0),
                    "id": call.id or "",
                    "name": (function.name if function else "") or "",
                    "arguments": (function.arguments if function else "") or "",
                }
            )
        logprobs = getattr(choice, "logprobs", None)
        for entry in getattr(logprobs, "content", None) or []:
            chunk.logprobs.append(
                {
                    "token": entry.token,
                    "logprob": entry.logprob,
                    "top_logprobs": [
                        {"token": t.token, "logprob": t.logprob} for t in entry.top_logprobs or []
                    ],
                }
            )
        chunk.finish = choice.finish_reason or chunk.finish
    return chunk


def _completion_chunk(event: dict[str, Any]) -> Chunk:
    chunk = Chunk()
    usage = event.get("usage") or {}
    chunk.prompt_tokens = int(usage.get("prompt_tokens") or 0)
    chunk.tokens = int(usage.get("completion_tokens") or 0)
    for choice in event.get("choices") or []:
        chunk.text += choice.get("text") or ""
        chunk.finish = choice.get("finish_reason") or chunk.finish
    return chunk


def _pooled(body: dict[str, Any]) -> list[float]:
    """The first embedding of an OpenAI reply; a server without pooling answers one vector per token,
    averaged here as llama-cpp's own backend does."""
    data = body.get("data") or []
    if not data:
        raise Unavailable("the endpoint answered /v1/embeddings without data")
    vector = data[0].get("embedding") or []
    if vector and isinstance(vector[0], list):
        width = len(vector[0])
        return [sum(row[i] for row in vector) / len(vector) for i in range(width)]
    return [float(v) for v in vector]
