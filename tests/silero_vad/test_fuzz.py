"""silero-vad under the fuzzer (tests/fuzzing.py): every RPC, fixed seed, a size CI affords."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from localfleet.proto import backend_pb2 as pb
from localfleet.settings import MiB
from localfleet_silero_vad.servicer import SileroVAD
from tests import fuzzing

PER_RPC = 300

#: the whole run happens in the first check's setup
pytestmark = pytest.mark.timeout(600)


def target(folder: Path, per_rpc: int = PER_RPC) -> fuzzing.Target:
    # One second of a quiet tone at 16 kHz: valid PCM that holds no speech.
    tone = [0.1 * math.sin(2 * math.pi * 440 * i / 16_000) for i in range(16_000)]
    seeds = {"VAD": pb.VADRequest(audio=tone)}
    return fuzzing.Target(
        "silero-vad",
        fuzzing.served(SileroVAD),
        [fuzzing.Stage(pb.ModelOptions(Model="silero-vad"), seeds)],
        folder,
        rss_bound=400 * MiB,
        per_rpc=per_rpc,
        counts={"LoadModel": per_rpc // 2},
    )


def test_fuzz(fuzz_report: fuzzing.Report, fuzz_check: str) -> None:
    # The run is the fixture's (tests/conftest.py: this module's `target`, once); one test a check.
    fuzz_report.check(fuzz_check)
