"""The huggingface backend against a real OpenAI-compatible server (llama.cpp's): what it answers is what
the endpoint answers, and the endpoint's failures are statuses that name it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import pytest_asyncio
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from localfleet.proto import backend_pb2 as pb
from localfleet.testing import Served, serving
from localfleet_huggingface.servicer import HuggingFace
from tests.huggingface.conftest import Endpoint

pytestmark = pytest.mark.asyncio(loop_scope="module")

CHAT = [pb.Message(role="user", content="Name three colours.")]
#: a prompt the model goes on with for hundreds of tokens (a chat may end at once)
COUNTING = "Count with me: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"
#: what greedy() sends, in OpenAI's names, for the same request straight to the server
SAME = {"max_tokens": 12, "temperature": 0, "seed": 7}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def remote(endpoint: Endpoint) -> AsyncIterator[Served]:
    async with serving(HuggingFace()) as served:
        result = await served.client.backend.LoadModel(pb.ModelOptions(Model=endpoint.url))
        assert result.success, result.message
        yield served


def greedy(**fields: Any) -> pb.PredictOptions:
    return pb.PredictOptions(**{"Temperature": 0, "Seed": 7, "Tokens": 12, **fields})


async def error_of(call: Any) -> GRPCError:
    with pytest.raises(GRPCError) as err:
        await call
    return err.value


async def stream(served: Served, request: pb.PredictOptions) -> list[pb.Reply]:
    replies: list[pb.Reply] = []
    async with served.client.backend.PredictStream.open() as call:
        await call.send_message(request, end=True)
        async for reply in call:
            replies.append(reply)
    return replies


async def cut_stream(served: Served, request: pb.PredictOptions, server: Endpoint) -> None:
    """A stream whose endpoint is stopped after its first reply, read to its end."""
    async with served.client.backend.PredictStream.open() as call:
        await call.send_message(request, end=True)
        assert await call.recv_message() is not None
        server.stop()
        async for _ in call:
            pass


async def test_chat_is_what_the_endpoint_answers(remote: Served, endpoint: Endpoint) -> None:
    body = {"messages": [{"role": "user", "content": CHAT[0].content}], **SAME}
    # The server reuses the last prompt's cache, which moves near-tied logits: each answer compared is
    # computed after the same prompt was just evaluated.
    endpoint.post("/v1/chat/completions", body)
    reply = await remote.client.backend.Predict(greedy(UseTokenizerTemplate=True, Messages=CHAT))
    expected = endpoint.post("/v1/chat/completions", body)["choices"][0]["message"]["content"]
    assert reply.message.decode() == expected
    assert reply.chat_deltas[0].content == expected
    assert expected


async def test_a_stream_arrives_in_pieces_that_join_to_predicts_text(remote: Served) -> None:
    request = greedy(UseTokenizerTemplate=True, Messages=CHAT)
    whole = await remote.client.backend.Predict(request)
    pieces = await stream(remote, request)
    assert len(pieces) > 2
    assert b"".join(p.message for p in pieces) == whole.message


async def test_a_raw_prompt_goes_to_completions(remote: Served, endpoint: Endpoint) -> None:
    prompt = "The capital of France is"
    body = {"prompt": prompt, **SAME, "max_tokens": 6}
    endpoint.post("/v1/completions", body)  # the same cache state for both answers, as above
    reply = await remote.client.backend.Predict(greedy(Prompt=prompt, Tokens=6))
    assert reply.message.decode() == endpoint.post("/v1/completions", body)["choices"][0]["text"]
    assert reply.tokens == 6


async def test_embedding_is_the_endpoints_pooled(remote: Served, endpoint: Endpoint) -> None:
    reply = await remote.client.backend.Embedding(pb.PredictOptions(Embeddings="A man is eating food."))
    rows = endpoint.post("/v1/embeddings", {"input": "A man is eating food."})["data"][0]["embedding"]
    assert len(reply.embeddings) == len(rows[0])  # a server without pooling: one vector per token, averaged
    first = sum(row[0] for row in rows) / len(rows)
    assert reply.embeddings[0] == pytest.approx(first, rel=1e-5)


async def test_a_cancelled_stream_closes_the_http_stream(remote: Served) -> None:
    # llama.cpp's server runs one request at a time: the next call is answered at once only if the
    # cancelled stream's HTTP request was closed (else it would wait for 400 tokens).
    long = greedy(Prompt=COUNTING, Tokens=400)
    async with remote.client.backend.PredictStream.open() as call:
        await call.send_message(long, end=True)
        assert await call.recv_message() is not None
        await call.cancel()
    started = time.monotonic()
    reply = await remote.client.backend.Predict(greedy(Prompt="Hi", Tokens=2), timeout=30)
    assert reply.tokens == 2
    assert time.monotonic() - started < 5


async def test_grammar_and_bad_numbers_are_invalid_argument(remote: Served) -> None:
    for request, named in (
        (greedy(Prompt="Hi", Grammar='root ::= "a"'), "Grammar is not supported"),
        (greedy(Prompt="Hi", Tokens=-1), "Tokens must be >= 0"),
        (greedy(Prompt="Hi", Temperature=float("nan")), "Temperature is nan"),
        (pb.PredictOptions(), "the request is empty"),
    ):
        err = await error_of(remote.client.backend.Predict(request))
        assert err.status == Status.INVALID_ARGUMENT
        assert named in (err.message or "")


async def test_an_endpoint_down_at_load_fails_it_naming_the_address() -> None:
    from tests.huggingface.conftest import free_port

    url = f"http://127.0.0.1:{free_port()}"
    async with serving(HuggingFace()) as served:
        result = await served.client.backend.LoadModel(pb.ModelOptions(Model=url))
        assert not result.success
        assert f"{url} cannot be reached" in result.message
        assert (await served.client.backend.Health(pb.HealthMessage())).message == b"OK"


async def test_a_path_or_junk_model_is_refused_at_once() -> None:
    async with serving(HuggingFace()) as served:
        for model in ("/models/gemma.gguf", "not a url or id"):
            result = await served.client.backend.LoadModel(pb.ModelOptions(Model=model))
            assert not result.success
            assert "remote endpoint" in result.message


async def test_an_endpoint_that_goes_down_is_unavailable_then_serves_again(gguf: Path) -> None:
    server = Endpoint(gguf)
    server.start()
    try:
        async with serving(HuggingFace()) as served:
            assert (await served.client.backend.LoadModel(pb.ModelOptions(Model=server.url))).success
            long = greedy(Prompt=COUNTING, Tokens=300)
            with pytest.raises(GRPCError) as err:  # the status comes with the trailers, at the end
                await cut_stream(served, long, server)
            assert err.value.status == Status.UNAVAILABLE
            assert server.url in (err.value.message or "")
            err2 = await error_of(served.client.backend.Predict(greedy(Prompt="Hi")))
            assert err2.status == Status.UNAVAILABLE
            assert "cannot be reached" in (err2.message or "")
            assert (await served.client.backend.Health(pb.HealthMessage())).message == b"OK"
            status = await served.client.backend.Status(pb.HealthMessage())
            assert status.state == pb.StatusResponse.ERROR
            server.start()  # back at the same address: served again without a reload
            reply = await served.client.backend.Predict(greedy(Prompt="Hi", Tokens=2))
            assert reply.tokens == 2
            status = await served.client.backend.Status(pb.HealthMessage())
            assert status.state == pb.StatusResponse.READY
    finally:
        server.stop()


async def test_a_bad_token_is_unauthenticated_and_no_token_is_ever_shown(
    gguf: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    server = Endpoint(gguf, api_key="sk-right-4711")
    server.start()
    caplog.set_level(logging.DEBUG)
    try:
        async with serving(HuggingFace()) as served:
            monkeypatch.setenv("HUGGINGFACEHUB_API_TOKEN", "sk-wrong-0815")
            result = await served.client.backend.LoadModel(pb.ModelOptions(Model=server.url))
            assert not result.success
            assert "refused the credentials (HTTP 401)" in result.message
            monkeypatch.setenv("MY_TOKEN", "sk-right-4711")
            request = pb.ModelOptions(Model=server.url, Options=["token_env:MY_TOKEN"])
            result = await served.client.backend.LoadModel(request)
            assert result.success, result.message
            assert "with a token" in result.message
            reply = await served.client.backend.Predict(greedy(Prompt="Hi", Tokens=2))
            assert reply.tokens == 2
    finally:
        server.stop()
    assert "sk-right-4711" not in caplog.text
    assert "sk-wrong-0815" not in caplog.text


async def test_a_slow_endpoint_is_deadline_exceeded(endpoint: Endpoint) -> None:
    async with serving(HuggingFace()) as served:
        request = pb.ModelOptions(Model=endpoint.url, Options=["timeout:0.05"])
        assert (await served.client.backend.LoadModel(request)).success
        prompt = "Tell me a story about a lighthouse keeper. " * 60  # its prompt alone takes longer
        err = await error_of(served.client.backend.Predict(greedy(Prompt=prompt, Tokens=4)))
        assert err.status == Status.DEADLINE_EXCEEDED
        assert "did not answer in time" in (err.message or "")
    await asyncio.to_thread(endpoint.settle)  # the server still computes the abandoned request


async def test_offline_mode_fails_the_load_saying_why(
    endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fuzzer found it: with HF_HUB_OFFLINE set, every chat call was INTERNAL (OfflineModeIsEnabled).
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    async with serving(HuggingFace()) as served:
        result = await served.client.backend.LoadModel(pb.ModelOptions(Model=endpoint.url))
        assert not result.success
        assert "HF_HUB_OFFLINE is set" in result.message


def connections_to(port: int) -> int:
    return sum(
        1
        for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
    )


async def test_free_closes_the_pooled_connections_to_the_endpoint(endpoint: Endpoint) -> None:
    await asyncio.to_thread(endpoint.settle)
    async with serving(HuggingFace()) as served:
        assert (await served.client.backend.LoadModel(pb.ModelOptions(Model=endpoint.url))).success
        assert (await served.client.backend.Predict(greedy(Prompt="Hi", Tokens=2))).tokens == 2
        assert connections_to(endpoint.port) >= 1  # kept alive for the next call
        assert (await served.client.backend.Free(pb.HealthMessage())).success
        assert connections_to(endpoint.port) == 0
