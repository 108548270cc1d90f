"""kokoro under the fuzzer (tests/fuzzing.py): every RPC, fixed seed, a size CI affords."""

from __future__ import annotations

from pathlib import Path

import pytest

from localfleet.proto import backend_pb2 as pb
from localfleet.settings import MiB
from localfleet_kokoro.servicer import BUNDLED, Kokoro
from tests import fuzzing

PER_RPC = 30
#: Kokoro speaks at about real time on two cores, and a few symbols can come out as seconds of speech:
#: longer texts are slow, not hung (piper's fuzzing keeps the long texts)
TEXT_CHARS = 40

#: the whole run happens in the first check's setup
pytestmark = pytest.mark.timeout(600)


def target(folder: Path, per_rpc: int = PER_RPC) -> fuzzing.Target:
    fuzzing.workspace(folder)
    seeds = fuzzing.speech_seeds(folder, "Hi.")
    return fuzzing.Target(
        "kokoro",
        fuzzing.served(Kokoro),
        [fuzzing.Stage(pb.ModelOptions(Model=BUNDLED, Options=["lang:en-us"]), seeds)],
        folder,
        rss_bound=1280 * MiB,
        per_rpc=per_rpc,
        counts={"LoadModel": per_rpc // 2},
        max_replies=2,
        tame=fuzzing.capped_text(TEXT_CHARS, TEXT_CHARS),
    )


def test_fuzz(fuzz_report: fuzzing.Report, fuzz_check: str) -> None:
    # The run is the fixture's (tests/conftest.py: this module's `target`, once); one test a check.
    fuzz_report.check(fuzz_check)
