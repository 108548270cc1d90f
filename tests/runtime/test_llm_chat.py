"""What every LLM backend shares: chat messages, tools and template variables from protobuf, and stop
strings held back from a stream (no model needed)."""

from __future__ import annotations

import json

import pytest

from localfleet.errors import BadInput
from localfleet.llm import chat
from localfleet.llm.stops import StopText, release
from localfleet.proto import backend_pb2 as pb


def test_messages_carry_every_field_a_template_reads() -> None:
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    request = pb.PredictOptions(
        Messages=[
            pb.Message(role="user", content="hi", name="ann"),
            pb.Message(role="assistant", content="", tool_calls=json.dumps(calls), reasoning_content="hm"),
            pb.Message(role="tool", content="3", tool_call_id="c1"),
        ]
    )
    assert chat.messages(request) == [
        {"role": "user", "content": "hi", "name": "ann"},
        {"role": "assistant", "content": "", "tool_calls": calls, "reasoning_content": "hm"},
        {"role": "tool", "content": "3", "tool_call_id": "c1"},
    ]


@pytest.mark.parametrize(
    ("message", "named"),
    [
        (pb.Message(role="wizard", content="x"), "Messages[0].role 'wizard' is not a chat role"),
        (pb.Message(role="assistant", tool_calls='{"a": 1}'), "Messages[0].tool_calls must be a JSON list"),
        (pb.Message(role="assistant", tool_calls="[" * 1000), "nests [ and { more than"),
    ],
)
def test_a_bad_message_names_its_index_and_field(message: pb.Message, named: str) -> None:
    with pytest.raises(BadInput, match=named.replace("[", r"\[").replace("(", r"\(")):
        chat.messages(pb.PredictOptions(Messages=[message]))


def test_tools_and_tool_choice() -> None:
    assert chat.tools("") is None
    assert chat.tools("[]") is None
    assert chat.tools('[{"type": "function"}]') == [{"type": "function"}]
    with pytest.raises(BadInput, match="Tools must be a JSON list"):
        chat.tools('{"type": "function"}')
    assert chat.tool_choice(" required ") == "required"
    assert chat.tool_choice('{"type": "function"}') == {"type": "function"}
    assert chat.tool_choice("") is None


def test_template_variables_are_booleans_and_integers_where_they_read_as_such() -> None:
    assert chat.variables({"enable_thinking": "False", "budget": "512", "effort": "high", "code": "007"}) == {
        "enable_thinking": False,
        "budget": 512,
        "effort": "high",
        "code": "007",
    }


def test_text_that_may_begin_a_stop_string_is_held_back_and_the_stop_never_sent() -> None:
    watch = StopText(["</s>", "\n\nUser:"])
    assert watch.feed("Hello <") == ("Hello ", False)
    assert watch.feed("/b> and \n") == ("</b> and ", False)
    assert watch.feed("\nUser: more") == ("", True)
    end = StopText(["STOP"])
    assert end.feed("almost ST") == ("almost ", False)
    assert end.flush() == "ST"


def test_release_works_on_bytes_split_inside_a_character() -> None:
    stops = ["é!".encode()]
    assert release(b"caf" + "é".encode()[:1], stops) == (3, False)
    assert release("café!".encode(), stops) == (3, True)
    assert release(b"plain", []) == (5, False)


def test_a_turn_is_read_only_from_messages_with_the_template_asked_for() -> None:
    message = pb.Message(role="user", content="hi")
    assert chat.turn(pb.PredictOptions(Prompt="p", Messages=[message])) is None
    assert chat.turn(pb.PredictOptions(UseTokenizerTemplate=True)) is None
    tools = '[{"type": "function", "function": {"name": "f"}}]'
    request = pb.PredictOptions(
        UseTokenizerTemplate=True, Messages=[message], Tools=tools, Metadata={"enable_thinking": "false"}
    )
    turn = chat.turn(request)
    assert turn is not None
    assert turn.messages == [{"role": "user", "content": "hi"}]
    assert turn.tools is not None
    assert turn.tools[0]["function"]["name"] == "f"
    assert turn.variables == {"enable_thinking": False}
    request.ToolChoice = "none"
    none = chat.turn(request)
    assert none is not None
    assert none.tools is None
    assert none.tool_choice == "none"
