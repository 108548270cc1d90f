"""local-store under the fuzzer (tests/fuzzing.py): every RPC, fixed seed, a size CI affords."""

from __future__ import annotations

from pathlib import Path

import pytest

from localfleet.proto import backend_pb2 as pb
from localfleet.settings import MiB
from localfleet_local_store.servicer import LocalStore
from tests import fuzzing

PER_RPC = 200

#: the whole run happens in the first check's setup
pytestmark = pytest.mark.timeout(600)


def target(folder: Path, per_rpc: int = PER_RPC) -> fuzzing.Target:
    seeds = fuzzing.store_seeds()
    return fuzzing.Target(
        "local-store",
        fuzzing.served(LocalStore),
        [fuzzing.Stage(pb.ModelOptions(Model="store://fuzz"), seeds)],
        folder,
        rss_bound=256 * MiB,
        per_rpc=per_rpc,
        counts={"LoadModel": per_rpc // 2},
        tame=fuzzing.same_dimension,
    )


def test_fuzz(fuzz_report: fuzzing.Report, fuzz_check: str) -> None:
    # The run is the fixture's (tests/conftest.py: this module's `target`, once); one test a check.
    fuzz_report.check(fuzz_check)
