"""A model's chat output split into content, reasoning and tool calls, incrementally, for every LLM backend.

What LocalAI's own llama.cpp backend does with its chat auto-parser: every streamed chunk carries the
`ChatDelta`s that the new text adds, and Predict's reply carries the whole message, so core gets tool
calls without guessing. The formats recognised, chosen by the chat template's family:

- reasoning: `<think>...</think>` at the start of the output, or an open `<think>` the template left at the
  end of the prompt (Qwen3, DeepSeek-R1, ...): the text up to `</think>` is reasoning.
- Hermes / Qwen (and any template without a family of its own): `<tool_call>{"name": ..., "arguments":
  {...}}</tool_call>`, one or more, content may come before them.
- Llama 3.x JSON: the output is `{"name": ..., "parameters": {...}}` (optionally after `<|python_tag|>`),
  several separated by `;`.
- Mistral: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`.

Tool-call markup is recognised only when the request carried tools. Text that could still become a
marker (`<too` at the end of a chunk) is held back until the next chunk decides it, so every content and
reasoning delta is final: the deltas joined equal the parse of the whole text. A tool call is emitted
once, whole (index, id, name, arguments), when its markup closes; core accumulates tool calls by index.
"""

from __future__ import annotations

import enum
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from localfleet.llm.stops import partial_suffix
from localfleet.proto import backend_pb2 as pb

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
HERMES_OPEN = "<tool_call>"
HERMES_CLOSE = "</tool_call>"
PYTHON_TAG = "<|python_tag|>"
MISTRAL_CALLS = "[TOOL_CALLS]"


class Family(enum.Enum):
    """How a chat template's model writes tool calls."""

    GENERIC = "generic"  # no family of its own: Hermes tags are still recognised
    HERMES = "hermes"
    LLAMA3 = "llama3"
    MISTRAL = "mistral"


def family_of(template: str) -> Family:
    """The tool-call family a chat template renders for (read from its text)."""
    if HERMES_OPEN in template:
        return Family.HERMES
    if MISTRAL_CALLS in template:
        return Family.MISTRAL
    if PYTHON_TAG in template or ("<|start_header_id|>" in template and "tools" in template):
        return Family.LLAMA3
    return Family.GENERIC


def opens_reasoning(prompt: str) -> bool:
    """Whether a rendered prompt ends inside a reasoning block (the template prefilled `<think>`)."""
    tail = prompt.rstrip()
    return tail.endswith(THINK_OPEN)


@dataclass
class ToolCall:
    index: int
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI sends it


@dataclass
class Delta:
    """What one piece of output adds to the message."""

    content: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.content or self.reasoning or self.tool_calls)

    def extend(self, other: Delta) -> None:
        self.content += other.content
        self.reasoning += other.reasoning
        self.tool_calls.extend(other.tool_calls)


class _State(enum.Enum):
    START = 0
    REASONING = 1
    CONTENT = 2
    TAGGED_CALL = 3  # inside <tool_call> ... </tool_call>
    JSON_CALLS = 4  # Llama 3 bare JSON calls, or Mistral's array after [TOOL_CALLS]


def _new_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


class ChatOutputParser:
    """Feed text as it is generated; each `feed` returns what it adds, `finish` flushes the rest."""

    def __init__(
        self,
        family: Family = Family.GENERIC,
        *,
        tools: bool = False,
        reasoning_open: bool = False,
        new_id: Callable[[], str] = _new_id,
    ) -> None:
        self.family = family
        self.tools = tools
        self._new_id = new_id
        self._buf = ""
        self._state = _State.REASONING if reasoning_open else _State.START
        self._skip_space = False  # drop whitespace between </think> or a tool call and what follows
        self._calls = 0
        self._json_prefix = ""  # the marker that opened JSON_CALLS, given back if the JSON is not calls
        self.message = Delta()  # everything so far: Predict's reply

        markers: list[tuple[str, _State]] = []
        if tools:
            if family in (Family.GENERIC, Family.HERMES):
                markers.append((HERMES_OPEN, _State.TAGGED_CALL))
            if family is Family.MISTRAL:
                markers.append((MISTRAL_CALLS, _State.JSON_CALLS))
            if family is Family.LLAMA3:
                markers.append((PYTHON_TAG, _State.JSON_CALLS))
        self._markers = markers

    def feed(self, text: str) -> Delta:
        self._buf += text
        return self._run(final=False)

    def finish(self) -> Delta:
        return self._run(final=True)

    # -- the state machine ---------------------------------------------------------------------
    def _run(self, *, final: bool) -> Delta:
        out = Delta()
        while self._step(out, final):
            pass
        self.message.extend(out)
        return out

    def _step(self, out: Delta, final: bool) -> bool:
        """Advance once; True while there is more to do with the buffer now."""
        state = self._state
        if state is _State.START:
            return self._start(final)
        if state is _State.REASONING:
            return self._reasoning(out, final)
        if state is _State.CONTENT:
            return self._content(out, final)
        if state is _State.TAGGED_CALL:
            return self._tagged_call(out, final)
        return self._json_calls(out, final)

    def _start(self, final: bool) -> bool:
        stripped = self._buf.lstrip()
        if not stripped and not final:
            return False
        if stripped.startswith(THINK_OPEN):
            self._buf = stripped[len(THINK_OPEN) :]
            self._state = _State.REASONING
            return True
        candidates = [THINK_OPEN]
        if self.tools and self.family is Family.LLAMA3:
            if stripped.startswith("{"):
                self._buf = stripped
                self._json_prefix = ""
                self._state = _State.JSON_CALLS
                return True
            candidates.append(PYTHON_TAG)
        if not final and stripped and any(c.startswith(stripped) for c in candidates):
            return False  # could still become a marker: wait for more text
        self._state = _State.CONTENT
        return True

    def _reasoning(self, out: Delta, final: bool) -> bool:
        at = self._buf.find(THINK_CLOSE)
        if at >= 0:
            out.reasoning += self._buf[:at]
            self._buf = self._buf[at + len(THINK_CLOSE) :]
            self._state = _State.CONTENT
            self._skip_space = True
            return True
        keep = 0 if final else partial_suffix(self._buf, THINK_CLOSE)
        cut = len(self._buf) - keep
        out.reasoning += self._buf[:cut]
        self._buf = self._buf[cut:]
        return False

    def _content(self, out: Delta, final: bool) -> bool:
        if self._skip_space:
            self._buf = self._buf.lstrip()
            if not self._buf:
                return False
            self._skip_space = False
        first: tuple[int, str, _State] | None = None
        for marker, state in self._markers:
            at = self._buf.find(marker)
            if at >= 0 and (first is None or at < first[0]):
                first = (at, marker, state)
        if first is not None:
            at, marker, state = first
            out.content += self._buf[:at]
            self._buf = self._buf[at + len(marker) :]
            self._json_prefix = marker
            self._state = state
            return True
        keep = 0 if final else max((partial_suffix(self._buf, m) for m, _ in self._markers), default=0)
        cut = len(self._buf) - keep
        out.content += self._buf[:cut]
        self._buf = self._buf[cut:]
        return False

    def _tagged_call(self, out: Delta, final: bool) -> bool:
        at = self._buf.find(HERMES_CLOSE)
        if at < 0 and not final:
            return False
        body = self._buf if at < 0 else self._buf[:at]
        self._buf = "" if at < 0 else self._buf[at + len(HERMES_CLOSE) :]
        call = _call_from(_loads(body))
        if call is None:  # not a tool call after all: it was content
            out.content += HERMES_OPEN + body + ("" if at < 0 else HERMES_CLOSE)
        else:
            out.tool_calls.append(self._numbered(*call))
            self._skip_space = True
        self._state = _State.CONTENT
        return at >= 0

    def _json_calls(self, out: Delta, final: bool) -> bool:
        text = self._buf.lstrip()
        llama3 = self.family is Family.LLAMA3
        if llama3 and self._calls and text.startswith(";"):  # Llama 3.1 separates calls with ";"
            text = text[1:].lstrip()
        if not text:
            if final:
                self._state = _State.CONTENT
            return False
        if llama3 and self._calls and not text.startswith("{"):  # the calls are over: the rest is content
            self._buf = text
            self._state = _State.CONTENT
            return True
        if not final and text.rstrip()[-1:] not in ("}", "]"):
            return False  # JSON cannot be complete yet; don't re-parse a growing prefix each token
        try:
            value, end = json.JSONDecoder().raw_decode(text)
        except json.JSONDecodeError:
            if final:  # it never became JSON: it was content
                out.content += self._json_prefix + self._buf
                self._buf = ""
                self._state = _State.CONTENT
            return False
        items = value if isinstance(value, list) else [value]
        calls = [_call_from(item) for item in items]
        if not items or any(c is None for c in calls):
            out.content += self._json_prefix + text[:end]
            self._buf = text[end:]
            self._state = _State.CONTENT
            return True
        out.tool_calls.extend(self._numbered(*c) for c in calls if c is not None)
        self._buf = text[end:]
        self._json_prefix = ""
        if not llama3:  # Mistral's one array holds every call
            self._state = _State.CONTENT
            self._skip_space = True
        return True

    def _numbered(self, name: str, arguments: str, call_id: str | None) -> ToolCall:
        call = ToolCall(index=self._calls, id=call_id or self._new_id(), name=name, arguments=arguments)
        self._calls += 1
        return call


def parse(
    text: str, family: Family = Family.GENERIC, *, tools: bool = False, reasoning_open: bool = False
) -> Delta:
    """The whole message of a finished output (what Predict returns)."""
    parser = ChatOutputParser(family, tools=tools, reasoning_open=reasoning_open)
    parser.feed(text)
    parser.finish()
    return parser.message


def _loads(body: str) -> Any:
    try:
        return json.loads(body)
    except json.JSONDecodeError:
        return None


def _call_from(value: Any) -> tuple[str, str, str | None] | None:
    """(name, arguments as JSON text, id) from one decoded call object; None when it is not a call."""
    if not isinstance(value, dict):
        return None
    if isinstance(value.get("function"), dict):  # OpenAI's own shape, as some models echo it
        value = {**value["function"], "id": value.get("id")}
    name = value.get("name")
    if not isinstance(name, str) or not name:
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    call_id = value.get("id")
    return name, arguments, call_id if isinstance(call_id, str) and call_id else None


def chat_delta(delta: Delta) -> pb.ChatDelta:
    """A delta as the `ChatDelta` core accumulates (tool calls by index)."""
    return pb.ChatDelta(
        content=delta.content,
        reasoning_content=delta.reasoning,
        tool_calls=[
            pb.ToolCallDelta(index=c.index, id=c.id, name=c.name, arguments=c.arguments)
            for c in delta.tool_calls
        ],
    )


class ChatReplies:
    """One chat call's output as the ChatDeltas core reads: a stream's chunk by chunk, or Predict's whole
    message."""

    def __init__(self, family: Family, *, tools: bool, reasoning_open: bool) -> None:
        self._parser = ChatOutputParser(family, tools=tools, reasoning_open=reasoning_open)

    def chunk(self, text: str, *, last: bool = False) -> pb.ChatDelta | None:
        """What `text`, the next piece of output, adds (with the rest of the output when `last`)."""
        delta = self._parser.feed(text)
        if last:
            delta.extend(self._parser.finish())
        return chat_delta(delta) if delta else None

    def whole(self, text: str) -> pb.ChatDelta | None:
        """The whole message of the output `text`."""
        self.chunk(text, last=True)
        return chat_delta(self._parser.message) if self._parser.message else None
