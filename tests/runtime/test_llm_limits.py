"""The bounds checked before llama.cpp's native parsers see a request (no model needed)."""

from __future__ import annotations

import pytest

from localfleet.errors import BadInput
from localfleet.llm import limits


def nested(depth: int) -> str:
    return "root ::= " + "(" * depth + '"a"' + ")" * depth


def test_the_grammar_that_crashed_llama_cpp_is_refused_naming_the_field_and_the_limit() -> None:
    grammar = nested(20000)
    with pytest.raises(BadInput) as err:
        limits.check_grammar(grammar)
    message = str(err.value)
    assert "Grammar" in message
    assert "20000 deep" in message
    assert str(limits.MAX_GRAMMAR_DEPTH) in message
    assert len(message) < 300  # a short excerpt, not the 40 KB grammar


def test_grammars_within_the_limits_pass() -> None:
    limits.check_grammar(nested(limits.MAX_GRAMMAR_DEPTH))
    limits.check_grammar('root ::= "[" num ("," num){2,4} "]"\nnum ::= [1-9] [0-9]{0,2}')


@pytest.mark.parametrize(
    "grammar",
    [
        'root ::= "' + "(" * 1000 + '"',  # in a string
        'root ::= "\\"' + "(" * 1000 + '"',  # an escaped quote does not end the string
        "root ::= [" + "(" * 1000 + "]",  # in a character class
        "root ::= [\\]" + "(" * 1000 + "]",  # an escaped ] does not end the class
        "# " + "(" * 1000 + '\nroot ::= "a"',  # in a comment
        "root ::= <" + "(" * 1000 + ">",  # in a token
    ],
    ids=["string", "escaped quote", "class", "escaped bracket", "comment", "token"],
)
def test_parentheses_in_literals_do_not_count(grammar: str) -> None:
    limits.check_grammar(grammar)


def test_a_literal_cannot_hide_nesting_after_it() -> None:
    grammar = 'root ::= "a(" [)] ' + "(" * 300 + '"b"' + ")" * 300
    with pytest.raises(BadInput, match="300 deep"):
        limits.check_grammar(grammar)


def test_an_oversized_grammar_is_refused() -> None:
    grammar = "root ::= r0\n" + "".join(f"r{i} ::= r{i + 1}\n" for i in range(8000)) + 'r8000 ::= "a"\n'
    with pytest.raises(BadInput, match=f"at most {limits.MAX_GRAMMAR_BYTES}"):
        limits.check_grammar(grammar)


def test_json_nesting_is_bounded_but_brackets_in_strings_do_not_count() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(BadInput, match=f"Tools .* more than {limits.MAX_JSON_DEPTH} levels"):
        limits.check_json("Tools", deep)
    limits.check_json("Tools", '[{"description": "' + "[{" * 1000 + '\\""}]')
    limits.check_json("Tools", "[" * limits.MAX_JSON_DEPTH + "]" * limits.MAX_JSON_DEPTH)


def test_stop_prompts_are_bounded() -> None:
    limits.check_stop_prompts(["</s>"] * limits.MAX_STOP_PROMPTS)
    with pytest.raises(BadInput, match="StopPrompts has"):
        limits.check_stop_prompts(["</s>"] * (limits.MAX_STOP_PROMPTS + 1))
    with pytest.raises(BadInput, match=r"StopPrompts\[1\]"):
        limits.check_stop_prompts(["ok", "x" * (limits.MAX_STOP_BYTES + 1)])


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 1e7])
def test_sampler_numbers_must_be_finite_and_bounded(value: float) -> None:
    with pytest.raises(BadInput, match="FrequencyPenalty"):
        limits.bounded("FrequencyPenalty", value)


def test_tiny_divisors() -> None:
    assert limits.temperature(1e-30) == 0.0  # greedy, not logits divided into infinity
    assert limits.temperature(0.7) == pytest.approx(0.7)
    assert limits.penalty(0) == 1.0
    with pytest.raises(BadInput, match="Penalty is 1e-30"):
        limits.penalty(1e-30)


def test_a_long_run_of_optional_classes_is_refused_with_the_repetition_that_works() -> None:
    # llama.cpp's work for one step grows exponentially with such a run: 60 of them never finished.
    with pytest.raises(BadInput) as err:
        limits.check_grammar("root ::= " + " ".join(["[a-z]?"] * 60))
    assert "60 optional character classes in a row" in str(err.value)
    assert "[a-z]{0,60}" in str(err.value)
    with pytest.raises(BadInput, match="7 optional character classes"):
        limits.check_grammar("root ::= " + " ".join([". *"] * 7))


@pytest.mark.parametrize(
    "grammar",
    [
        "root ::= [a-z]{0,60}",
        'root ::= "a"? "b"? "c"? "d"? "e"? "f"? "g"? "h"?',  # literals: no token splits many ways
        "root ::= [a]? [b]? [c]? | [d]? [e]? [f]? [g]?",  # runs in different alternatives
        'root ::= [0-9]? [0-9]? [0-9]? [0-9]? "-" [0-9]? [0-9]? [0-9]? [0-9]?',
        "root ::= ([a]? [b]? [c]?)? ([d]? [e]? [f]?)?",
        # what a JSON-schema converter writes for numbers and strings
        'number ::= "-"? ([0-9] | [1-9] [0-9]{0,15}) ("." [0-9]+)? ([eE] [-+]? [0-9]+)?\n'
        'string ::= "\\"" ([^"\\\\] | "\\\\" ["\\\\/bfnrt])* "\\""',
    ],
)
def test_grammars_without_long_optional_runs_pass(grammar: str) -> None:
    limits.check_grammar(grammar)
