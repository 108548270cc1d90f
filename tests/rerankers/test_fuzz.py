"""rerankers under the fuzzer (tests/fuzzing.py): every RPC, fixed seed, a size CI affords."""

from __future__ import annotations

from pathlib import Path

import pytest

from localfleet.proto import backend_pb2 as pb
from localfleet.settings import MiB
from localfleet_rerankers.servicer import Rerankers
from tests import fuzzing
from tests.transformers.models import build_cross_encoder

PER_RPC = 80

#: the whole run happens in the first check's setup
pytestmark = pytest.mark.timeout(600)


def target(folder: Path, per_rpc: int = PER_RPC) -> fuzzing.Target:
    # The cross-encoder lies in the folder requests may use, as a models volume would.
    model = folder / "cross-encoder"
    if not (model / "config.json").exists():
        build_cross_encoder(model)
    documents = ["A man is eating food.", "The girl is carrying a baby.", "A man is eating bread."]
    seeds = {"Rerank": pb.RerankRequest(query="What does the man eat?", documents=documents, top_n=2)}
    return fuzzing.Target(
        "rerankers",
        fuzzing.served(Rerankers),
        [fuzzing.Stage(pb.ModelOptions(Model=str(model)), seeds)],
        folder,
        rss_bound=1536 * MiB,
        per_rpc=per_rpc,
        counts={"LoadModel": per_rpc // 4},
    )


def test_fuzz(fuzz_report: fuzzing.Report, fuzz_check: str) -> None:
    # The run is the fixture's (tests/conftest.py: this module's `target`, once); one test a check.
    fuzz_report.check(fuzz_check)
