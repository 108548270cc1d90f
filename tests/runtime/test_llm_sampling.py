"""PredictOptions' sampling fields as the neutral Sampling every LLM engine maps from."""

from __future__ import annotations

import math

import pytest

from localfleet.errors import BadInput
from localfleet.llm.sampling import MAX_TOP_LOGPROBS, sampling
from localfleet.proto import backend_pb2 as pb


def test_core_defaults_map_to_engine_values() -> None:
    got = sampling(pb.PredictOptions(Temperature=0.9, TopP=0.95, TopK=40, Seed=7), default_tokens=64)
    assert (got.max_tokens, got.top_k, got.seed) == (64, 40, 7)
    assert (got.temperature, got.top_p) == pytest.approx((0.9, 0.95))  # float32 on the wire
    assert (got.repeat_penalty, got.min_p, got.typical_p, got.logprobs) == (1.0, 0.0, 1.0, None)
    assert not got.greedy


def test_zero_values_are_off_and_greedy() -> None:
    got = sampling(pb.PredictOptions(Seed=-1, TopK=-5, StopPrompts=["", "END"]), default_tokens=16)
    assert got.greedy
    assert (got.top_k, got.top_p, got.seed) == (0, 1.0, None)
    assert got.stop == ("END",)


def test_logprobs_asked_either_way_and_capped() -> None:
    assert sampling(pb.PredictOptions(Logprobs=1), 8).logprobs == 0
    assert sampling(pb.PredictOptions(TopLogprobs=500), 8).logprobs == MAX_TOP_LOGPROBS


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.PredictOptions(Tokens=-1), "Tokens"),
        (pb.PredictOptions(Temperature=math.nan), "Temperature"),
        (pb.PredictOptions(TopP=1.5), "TopP"),
        (pb.PredictOptions(MinP=-0.1), "MinP"),
        (pb.PredictOptions(TypicalP=math.inf), "TypicalP"),
        (pb.PredictOptions(FrequencyPenalty=1e9), "FrequencyPenalty"),
        (pb.PredictOptions(PresencePenalty=-math.inf), "PresencePenalty"),
        (pb.PredictOptions(Penalty=1e-9), "Penalty"),
        (pb.PredictOptions(StopPrompts=["x" * 5000]), "StopPrompts"),
    ],
)
def test_unusable_values_name_their_field(request_: pb.PredictOptions, field: str) -> None:
    with pytest.raises(BadInput, match=field):
        sampling(request_, 8)
