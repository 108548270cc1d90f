"""Generated text into the Replies core reads, for backends whose engine yields `TextStep`s."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from localfleet.call import Call
from localfleet.llm.chat_output import ChatReplies
from localfleet.proto import backend_pb2 as pb


@dataclass(frozen=True)
class TextStep:
    """Text generated since the last step; the last step (`finish` set) carries the totals."""

    text: str
    tokens: int  # generated so far
    finish: str | None = None  # "stop", "length" or "cancelled" on the last step
    prompt_ms: float = 0.0
    generation_ms: float = 0.0


def reply(text: str, step: TextStep, prompt_tokens: int) -> pb.Reply:
    return pb.Reply(
        message=text.encode(),
        tokens=step.tokens,
        prompt_tokens=prompt_tokens,
        timing_prompt_processing=step.prompt_ms,
        timing_token_generation=step.generation_ms,
    )


async def counted(steps: AsyncIterator[TextStep], call: Call) -> AsyncIterator[TextStep]:
    """`steps`, their tokens counted in the call's metrics."""
    done = 0
    async for step in steps:
        call.count_tokens(step.tokens - done)
        done = max(done, step.tokens)
        yield step


async def stream(
    steps: AsyncIterator[TextStep], chat: ChatReplies | None, prompt_tokens: int
) -> AsyncIterator[pb.Reply]:
    """PredictStream's replies: one a step with text (or chat deltas), and the last always."""
    async for step in steps:
        out = reply(step.text, step, prompt_tokens)
        last = step.finish is not None
        if chat is not None and (delta := chat.chunk(step.text, last=last)) is not None:
            out.chat_deltas.append(delta)
        if last or out.message or out.chat_deltas:
            yield out


async def whole(steps: AsyncIterator[TextStep], chat: ChatReplies | None, prompt_tokens: int) -> pb.Reply:
    """Predict's reply: the whole text, and its whole chat message."""
    parts: list[str] = []
    last: TextStep | None = None
    async for step in steps:
        parts.append(step.text)
        last = step
    assert last is not None  # an engine always ends with a final step
    text = "".join(parts)
    out = reply(text, last, prompt_tokens)
    if chat is not None and (message := chat.whole(text)) is not None:
        out.chat_deltas.append(message)
    return out
