"""piper under the fuzzer (tests/fuzzing.py): every RPC, fixed seed, a size CI affords."""

from __future__ import annotations

from pathlib import Path

import pytest

from localfleet.proto import backend_pb2 as pb
from localfleet.settings import MiB
from localfleet_piper.servicer import Piper
from tests import fuzzing

PER_RPC = 60
#: TTS speaks all its text before it answers: longer texts are slow, not hung (TTSStream is cancelled
#: after a few chunks, so it keeps its long texts)
TTS_CHARS = 120
#: a request that once took 1.9 GiB (one run of 1,649 phonemes), sent every run: random ones rarely find it
KNOWN = [("TTSStream", pb.TTSRequest(text="字" * 135))]

#: the whole run happens in the first check's setup
pytestmark = pytest.mark.timeout(600)


def target(folder: Path, per_rpc: int = PER_RPC) -> fuzzing.Target:
    fuzzing.workspace(folder)
    seeds = fuzzing.speech_seeds(folder)
    return fuzzing.Target(
        "piper",
        fuzzing.served(Piper),
        [fuzzing.Stage(pb.ModelOptions(Model="en_US-joe-medium.onnx"), seeds)],
        folder,
        rss_bound=800 * MiB,
        per_rpc=per_rpc,
        counts={"LoadModel": per_rpc // 2},
        max_replies=2,
        tame=fuzzing.capped_text(TTS_CHARS),
        known=KNOWN,
    )


def test_fuzz(fuzz_report: fuzzing.Report, fuzz_check: str) -> None:
    # The run is the fixture's (tests/conftest.py: this module's `target`, once); one test a check.
    fuzz_report.check(fuzz_check)
