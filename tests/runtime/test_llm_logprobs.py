"""localfleet.llm.logprobs and limits.logit_bias: what llama-cpp and vllm share for log-probabilities."""

from __future__ import annotations

import json

import pytest

from localfleet.errors import BadInput
from localfleet.llm import limits
from localfleet.llm.logprobs import LogprobsJson


def _entry(token: str) -> dict[str, object]:
    return {"token": token, "logprob": -0.5, "top_logprobs": []}


def test_each_chunk_has_its_tokens_and_the_last_has_them_all() -> None:
    logprobs = LogprobsJson()
    first = logprobs.add([_entry("a")])
    assert json.loads(first)["content"] == [_entry("a")]
    assert logprobs.add([]) == b""  # nothing new: the chunk carries no logprobs
    last = logprobs.add([_entry("b")], last=True)
    assert json.loads(last)["content"] == [_entry("a"), _entry("b")]
    assert logprobs.whole() == last
    assert last == json.dumps({"content": [_entry("a"), _entry("b")]}).encode()


def test_no_entries_is_no_document() -> None:
    assert LogprobsJson().whole() == b""


def test_logit_bias_reads_token_ids_and_bounds_them() -> None:
    assert limits.logit_bias("", 10) == {}
    assert limits.logit_bias('{"3": -100, "4": 2.5}', 10) == {3: -100.0, 4: 2.5}
    for text, says in (
        ('{"10": 1}', "outside the vocabulary"),
        ('{"a": 1}', "not a token id"),
        ("[1, 2]", "JSON object"),
        ('{"1": 1e300}', "LogitBias"),
    ):
        with pytest.raises(BadInput, match=says):
            limits.logit_bias(text, 10)
