"""localfleet.llm.replies: engine steps into PredictStream's and Predict's replies, chat deltas included."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from localfleet.llm.chat_output import ChatReplies, Family
from localfleet.llm.replies import TextStep, stream, whole
from localfleet.proto import backend_pb2 as pb

pytestmark = pytest.mark.asyncio

PIECES = ["<think>plan", "</think>Hi", " <tool_", 'call>{"name": "f", "arguments": {}}</tool_call>']


async def _steps(pieces: list[str]) -> AsyncIterator[TextStep]:
    for n, text in enumerate(pieces, 1):
        yield TextStep(text, n)
    yield TextStep("", len(pieces), "stop", 2.0, 3.0)


def _chat() -> ChatReplies:
    return ChatReplies(Family.HERMES, tools=True, reasoning_open=False)


async def test_a_stream_sends_its_text_and_deltas_and_always_the_last_reply() -> None:
    replies = [r async for r in stream(_steps(PIECES), _chat(), 7)]
    assert b"".join(r.message for r in replies) == "".join(PIECES).encode()
    last = replies[-1]
    assert (last.tokens, last.prompt_tokens, last.timing_token_generation) == (4, 7, 3.0)
    deltas = [d for r in replies for d in r.chat_deltas]
    assert "".join(d.reasoning_content for d in deltas) == "plan"
    assert "".join(d.content for d in deltas) == "Hi "
    assert [(c.index, c.name) for d in deltas for c in d.tool_calls] == [(0, "f")]


async def test_a_stream_skips_empty_steps_but_not_the_last() -> None:
    replies = [r async for r in stream(_steps(["a", "", "b"]), None, 1)]
    assert [r.message for r in replies] == [b"a", b"b", b""]
    assert not any(r.chat_deltas for r in replies)


async def test_predict_gets_the_whole_text_and_the_whole_message() -> None:
    reply = await whole(_steps(PIECES), _chat(), 7)
    assert reply.message == "".join(PIECES).encode()
    [message] = reply.chat_deltas
    assert (message.reasoning_content, message.content) == ("plan", "Hi ")
    assert [c.name for c in message.tool_calls] == ["f"]
    plain = await whole(_steps(["x"]), None, 1)
    assert not plain.chat_deltas
    assert isinstance(plain, pb.Reply)
