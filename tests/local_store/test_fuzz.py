"""local-store under the fuzzer (tests/fuzzing.py): every RPC, fixed seed, a size CI affords."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf.message import Message

from localfleet.proto import backend_pb2 as pb
from localfleet.settings import MiB
from localfleet_local_store.servicer import LocalStore
from tests import fuzzing

PER_RPC = 200
SEED_KEY = [0.1, 0.2, 0.3, 0.4]
#: the dimension of the seeds' keys
DIM = len(SEED_KEY)

#: the whole run happens in the first check's setup
pytestmark = pytest.mark.timeout(600)


def tame(rpc: str, request: Message) -> None:
    """A StoresSet that would fix another dimension is given the seed's: a store keeps the dimension of
    its first keys until all are deleted, so one such set would have every later request refused for
    it (mixed dimensions in one request stay: they are refused whole)."""
    if not isinstance(request, pb.StoresSetOptions) or not request.Keys:
        return
    if len({len(key.Floats) for key in request.Keys}) == 1 and len(request.Keys[0].Floats) != DIM:
        for key in request.Keys:
            floats = [*key.Floats[:DIM], *[0.5] * DIM][:DIM]
            del key.Floats[:]
            key.Floats.extend(floats)


def target(folder: Path, per_rpc: int = PER_RPC) -> fuzzing.Target:
    key = pb.StoresKey(Floats=SEED_KEY)
    value = pb.StoresValue(Bytes=b"east")
    seeds = {
        "StoresSet": pb.StoresSetOptions(Keys=[key], Values=[value]),
        "StoresGet": pb.StoresGetOptions(Keys=[key]),
        "StoresDelete": pb.StoresDeleteOptions(Keys=[pb.StoresKey(Floats=SEED_KEY[::-1])]),
        "StoresFind": pb.StoresFindOptions(Key=key, TopK=3),
    }
    return fuzzing.Target(
        "local-store",
        fuzzing.served(LocalStore),
        [fuzzing.Stage(pb.ModelOptions(Model="store://fuzz"), seeds)],
        folder,
        rss_bound=256 * MiB,
        per_rpc=per_rpc,
        counts={"LoadModel": per_rpc // 2},
        tame=tame,
    )


def test_fuzz(fuzz_report: fuzzing.Report, fuzz_check: str) -> None:
    # The run is the fixture's (tests/conftest.py: this module's `target`, once); one test a check.
    fuzz_report.check(fuzz_check)
