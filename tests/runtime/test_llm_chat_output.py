"""The chat output parser over strings: formats, streaming in any split, text that only looks like markup."""

from __future__ import annotations

import itertools
import json

import pytest

from localfleet.llm.chat_output import (
    ChatOutputParser,
    Delta,
    Family,
    family_of,
    opens_reasoning,
    parse,
)

HERMES = (
    'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "get_time", "arguments": {"tz": "CET"}}\n</tool_call>'
)


def ids() -> itertools.count[int]:
    return itertools.count()


def streamed(text: str, sizes: int, family: Family, **kwargs: bool) -> tuple[Delta, list[Delta]]:
    """Feed `text` in pieces of `sizes` characters; the deltas and their sum."""
    counter = itertools.count()
    parser = ChatOutputParser(family, new_id=lambda: f"call_{next(counter)}", **kwargs)
    deltas = [parser.feed(text[i : i + sizes]) for i in range(0, len(text), sizes)]
    deltas.append(parser.finish())
    joined = Delta()
    for d in deltas:
        joined.extend(d)
    return joined, deltas


def test_plain_text_is_content() -> None:
    message = parse("Hello there.")
    assert message == Delta(content="Hello there.")


def test_hermes_tool_calls_with_leading_content() -> None:
    message = parse(HERMES, Family.HERMES, tools=True)
    assert message.content == "Let me check.\n"
    assert [(c.index, c.name, json.loads(c.arguments)) for c in message.tool_calls] == [
        (0, "get_weather", {"city": "Paris"}),
        (1, "get_time", {"tz": "CET"}),
    ]
    assert all(c.id.startswith("call_") for c in message.tool_calls)
    assert len({c.id for c in message.tool_calls}) == 2


def test_tool_markup_is_content_when_the_request_had_no_tools() -> None:
    assert parse(HERMES, Family.HERMES, tools=False) == Delta(content=HERMES)


def test_reasoning_then_content() -> None:
    message = parse("<think>\nThe user greets me.\n</think>\n\nHello!")
    assert message.reasoning == "\nThe user greets me.\n"
    assert message.content == "Hello!"


def test_reasoning_opened_by_the_template() -> None:
    assert opens_reasoning("<|im_start|>assistant\n<think>\n")
    assert not opens_reasoning("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    message = parse("I should answer briefly.</think>Yes.", reasoning_open=True)
    assert message == Delta(content="Yes.", reasoning="I should answer briefly.")


def test_unclosed_reasoning_stays_reasoning() -> None:
    assert parse("<think>still thinking") == Delta(reasoning="still thinking")


def test_reasoning_then_a_tool_call() -> None:
    text = '<think>Need weather.</think>\n<tool_call>{"name": "w", "arguments": "{\\"a\\": 1}"}</tool_call>'
    message = parse(text, Family.HERMES, tools=True)
    assert message.reasoning == "Need weather."
    assert message.content == ""
    [call] = message.tool_calls
    assert (call.name, call.arguments) == ("w", '{"a": 1}')  # string arguments pass through as they are


def test_llama3_json_calls() -> None:
    text = '{"name": "get_weather", "parameters": {"city": "Oslo"}}; {"name": "noop", "parameters": {}}'
    message = parse(text, Family.LLAMA3, tools=True)
    assert message.content == ""
    assert [(c.name, json.loads(c.arguments)) for c in message.tool_calls] == [
        ("get_weather", {"city": "Oslo"}),
        ("noop", {}),
    ]


def test_llama3_python_tag_call() -> None:
    message = parse('<|python_tag|>{"name": "f", "parameters": {"x": 1}}', Family.LLAMA3, tools=True)
    assert [(c.name, c.arguments) for c in message.tool_calls] == [("f", '{"x": 1}')]


def test_llama3_json_that_is_not_a_call_is_content() -> None:
    text = '{"answer": 42} is the JSON you asked for'
    assert parse(text, Family.LLAMA3, tools=True) == Delta(content=text)


def test_mistral_calls() -> None:
    text = 'Sure. [TOOL_CALLS][{"name": "a", "arguments": {"q": "x"}}, {"name": "b", "arguments": {}}]'
    message = parse(text, Family.MISTRAL, tools=True)
    assert message.content == "Sure. "
    assert [c.name for c in message.tool_calls] == ["a", "b"]
    assert [c.index for c in message.tool_calls] == [0, 1]


def test_a_broken_tool_call_is_given_back_as_content() -> None:
    text = "<tool_call>{not json}</tool_call> ok"
    assert parse(text, Family.HERMES, tools=True) == Delta(content=text)
    unclosed = 'x <tool_call>{"name": "f", "arguments": {}'
    assert parse(unclosed, Family.HERMES, tools=True) == Delta(content=unclosed)


def test_an_unclosed_but_complete_tool_call_still_counts() -> None:
    message = parse('<tool_call>{"name": "f", "arguments": {"k": true}}', Family.HERMES, tools=True)
    assert [(c.name, c.arguments) for c in message.tool_calls] == [("f", '{"k": true}')]


def test_text_that_only_starts_like_a_marker_is_released() -> None:
    parser = ChatOutputParser(Family.HERMES, tools=True)
    assert parser.feed("a <too") == Delta(content="a ")  # held back: it may become <tool_call>
    assert parser.feed("th") == Delta(content="<tooth")
    assert parser.finish() == Delta()


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 1000])
@pytest.mark.parametrize(
    ("text", "family", "tools", "reasoning_open"),
    [
        (HERMES, Family.HERMES, True, False),
        ("<think>a < b</think>\nSo: <tool_call>{}</tool_call> <tool", Family.HERMES, True, False),
        (
            '{"name": "f", "parameters": {"s": "}"}}; {"name": "g", "parameters": {}}',
            Family.LLAMA3,
            True,
            False,
        ),
        ("deep thought</think>answer <think>not reasoning</think>", Family.GENERIC, False, True),
        ('[TOOL_CALLS][{"name": "a", "arguments": {}}]', Family.MISTRAL, True, False),
        ("   <thinking is not a tag", Family.GENERIC, True, False),
        ("héllo wörld ✓", Family.GENERIC, True, False),
    ],
)
def test_streaming_in_any_split_equals_the_whole_parse(
    text: str, family: Family, tools: bool, reasoning_open: bool, size: int
) -> None:
    whole = ChatOutputParser(family, tools=tools, reasoning_open=reasoning_open, new_id=lambda: "id")
    whole.feed(text)
    whole.finish()
    joined, deltas = streamed(text, size, family, tools=tools, reasoning_open=reasoning_open)
    assert joined.content == whole.message.content
    assert joined.reasoning == whole.message.reasoning
    assert [(c.index, c.name, c.arguments) for c in joined.tool_calls] == [
        (c.index, c.name, c.arguments) for c in whole.message.tool_calls
    ]
    # Every call is emitted once, whole.
    assert sum(len(d.tool_calls) for d in deltas) == len(whole.message.tool_calls)


def test_family_of_templates() -> None:
    assert family_of("{% for t in tools %}<tool_call>{{ t }}</tool_call>{% endfor %}") is Family.HERMES
    assert family_of("{{ '<|python_tag|>' }}") is Family.LLAMA3
    assert family_of("<|start_header_id|>{% if tools %}x{% endif %}") is Family.LLAMA3
    assert family_of("[AVAILABLE_TOOLS]{{ tools }}[TOOL_CALLS]") is Family.MISTRAL
    assert family_of("<start_of_turn>user\n{{ m }}") is Family.GENERIC
