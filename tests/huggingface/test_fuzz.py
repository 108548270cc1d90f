"""huggingface under the fuzzer (tests/fuzzing.py): every RPC, fixed seed, a size CI affords, against a
real endpoint (llama.cpp's server on the bundled Gemma)."""

from __future__ import annotations

import pytest
from google.protobuf.message import Message

from localfleet.proto import backend_pb2 as pb
from localfleet.settings import MiB
from localfleet_huggingface.servicer import HuggingFace
from tests import fuzzing
from tests.huggingface.conftest import Endpoint

PER_RPC = 60
#: new tokens a generation may ask for: more is slower at the endpoint, not different here
MAX_TOKENS = 8

#: the whole run happens in the first check's setup
pytestmark = pytest.mark.timeout(600)


def tame(rpc: str, request: Message) -> None:
    if isinstance(request, pb.PredictOptions) and not 0 < request.Tokens <= MAX_TOKENS:
        request.Tokens = MAX_TOKENS


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory, endpoint: Endpoint) -> fuzzing.Report:
    folder = tmp_path_factory.mktemp("fuzz")
    fuzzing.workspace(folder)
    chat = pb.PredictOptions(
        UseTokenizerTemplate=True, Messages=[pb.Message(role="user", content="Hi!")], Tokens=MAX_TOKENS
    )
    seeds = {
        "Predict": pb.PredictOptions(Prompt="The capital of France is", Tokens=MAX_TOKENS, Temperature=0),
        "PredictStream": chat,
        "Embedding": pb.PredictOptions(Embeddings="A man is eating food."),
    }
    target = fuzzing.Target(
        "huggingface",
        fuzzing.served(HuggingFace),
        [fuzzing.Stage(pb.ModelOptions(Model=endpoint.url), seeds)],
        folder,
        rss_bound=512 * MiB,
        per_rpc=PER_RPC,
        counts={"LoadModel": PER_RPC // 4},
        tame=tame,
        env={
            "HF_HUB_OFFLINE": "0"
        },  # the backend refuses to load with it: huggingface_hub would call nothing
    )
    return fuzzing.run(target)


@pytest.mark.parametrize("check", fuzzing.params())
def test_fuzz(report: fuzzing.Report, check: str) -> None:
    report.check(check)
