"""Chat requests as every LLM backend's template takes them: messages, tools, tool choice, variables.

Protobuf in, the plain dicts and lists of OpenAI's chat format out, checked and bounded first (json and a
template's `tojson` recurse per nesting level: see `limits`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from localfleet.errors import BadInput
from localfleet.inputs import excerpt, parse_json
from localfleet.llm import limits
from localfleet.proto import backend_pb2 as pb

#: the roles chat templates know; a template meeting another one renders it wrongly or raises
ROLES = ("system", "developer", "user", "assistant", "tool", "function")
_INTEGER = re.compile(r"-?(0|[1-9][0-9]{0,17})")


def parsed_json(field: str, text: str) -> Any:
    """The JSON in `field`, its nesting bounded before it is parsed."""
    limits.check_json(field, text)
    return parse_json(text, field)


def messages(request: pb.PredictOptions) -> list[dict[str, Any]]:
    """`Messages` as chat dicts, each role checked."""
    return [message(index, m) for index, m in enumerate(request.Messages)]


def message(index: int, message: pb.Message) -> dict[str, Any]:
    _check_role(index, message.role)
    item: dict[str, Any] = {"role": message.role, "content": message.content}
    for key in ("name", "tool_call_id", "reasoning_content"):
        if value := getattr(message, key):
            item[key] = value
    if message.tool_calls:
        calls = parsed_json(f"Messages[{index}].tool_calls", message.tool_calls)
        if not isinstance(calls, list):
            raise BadInput(f"Messages[{index}].tool_calls must be a JSON list of OpenAI tool calls")
        item["tool_calls"] = calls
    return item


def check_roles(chat: Iterable[Mapping[str, Any]]) -> None:
    """For chats built elsewhere than `messages`: every role one chat templates know."""
    for index, item in enumerate(chat):
        _check_role(index, str(item.get("role", "")))


def _check_role(index: int, role: str) -> None:
    if role not in ROLES:
        known = ", ".join(ROLES)
        raise BadInput(f"Messages[{index}].role {excerpt(role)} is not a chat role; use one of {known}")


@dataclass(frozen=True)
class Turn:
    """A chat request as a chat template takes it."""

    messages: list[dict[str, Any]]
    tools: list[Any] | None  # None too when ToolChoice is "none": the template then shows no tools
    tool_choice: Any
    variables: dict[str, Any]  # Metadata (enable_thinking, ...)


def turn(request: pb.PredictOptions) -> Turn | None:
    """The request's chat turn: with UseTokenizerTemplate and Messages; None for a plain Prompt."""
    if not (request.UseTokenizerTemplate and request.Messages):
        return None
    listed = tools(request.Tools)
    choice = tool_choice(request.ToolChoice)
    if choice == "none":
        listed = None
    return Turn(messages(request), listed, choice, variables(request.Metadata))


def tools(text: str) -> list[Any] | None:
    """`Tools`: a JSON list of OpenAI tools, None when empty."""
    if not text.strip():
        return None
    listed = parsed_json("Tools", text)
    if not isinstance(listed, list):
        raise BadInput('Tools must be a JSON list of OpenAI tools ([{"type": "function", ...}])')
    return listed or None


def tool_choice(text: str) -> Any:
    """`ToolChoice`: JSON ({"type": "function", ...}) or a bare auto / none / required; None when empty."""
    if not text.strip():
        return None
    limits.check_json("ToolChoice", text)
    try:
        return parse_json(text, "ToolChoice")
    except BadInput:  # not JSON: a bare word
        return text.strip()


def variables(metadata: Mapping[str, str]) -> dict[str, Any]:
    """`Metadata` as template variables: strings, except "true"/"false" (`enable_thinking`) as booleans
    and plain integers (a thinking budget) as ints, since templates test and compare them."""
    return {key: template_value(value) for key, value in metadata.items()}


def template_value(value: str) -> Any:
    lowered = value.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if _INTEGER.fullmatch(value.strip()):
        return int(value)
    return value
