"""milvus-store under the fuzzer (tests/fuzzing.py): every RPC, fixed seed, on the embedded engine."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf.message import Message

from localfleet.proto import backend_pb2 as pb
from localfleet.settings import MiB
from localfleet_milvus_store.servicer import MilvusStore
from tests import fuzzing

PER_RPC = 100
SEED_KEY = [0.1, 0.2, 0.3, 0.4]
DIM = len(SEED_KEY)

#: the whole run happens in the first check's setup
pytestmark = pytest.mark.timeout(600)


def tame(rpc: str, request: Message) -> None:
    """A StoresSet that would fix another dimension gets the seed's (as in local-store's fuzz test): one
    such set would have every later request refused for it."""
    if not isinstance(request, pb.StoresSetOptions) or not request.Keys:
        return
    if len({len(key.Floats) for key in request.Keys}) == 1 and len(request.Keys[0].Floats) != DIM:
        for key in request.Keys:
            floats = [*key.Floats[:DIM], *[0.5] * DIM][:DIM]
            del key.Floats[:]
            key.Floats.extend(floats)


def target(folder: Path, per_rpc: int = PER_RPC) -> fuzzing.Target:
    key = pb.StoresKey(Floats=SEED_KEY)
    seeds = {
        "StoresSet": pb.StoresSetOptions(Keys=[key], Values=[pb.StoresValue(Bytes=b"east")]),
        "StoresGet": pb.StoresGetOptions(Keys=[key]),
        "StoresDelete": pb.StoresDeleteOptions(Keys=[pb.StoresKey(Floats=SEED_KEY[::-1])]),
        "StoresFind": pb.StoresFindOptions(Key=key, TopK=3),
    }
    return fuzzing.Target(
        "milvus-store",
        fuzzing.served(MilvusStore),
        [fuzzing.Stage(pb.ModelOptions(Model="store://fuzz"), seeds)],
        folder,
        rss_bound=1024 * MiB,
        per_rpc=per_rpc,
        counts={"LoadModel": per_rpc // 2},
        tame=tame,
        env={"LOCALFLEET_MILVUS_DIR": str(folder / "milvus")},
    )


def test_fuzz(fuzz_report: fuzzing.Report, fuzz_check: str) -> None:
    # The run is the fixture's (tests/conftest.py: this module's `target`, once); one test a check.
    fuzz_report.check(fuzz_check)
