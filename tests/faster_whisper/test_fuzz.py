"""faster-whisper under the fuzzer (tests/fuzzing.py): every RPC, fixed seed, a size CI affords."""

from __future__ import annotations

from pathlib import Path

import pytest

from localfleet.proto import backend_pb2 as pb
from localfleet.settings import MiB
from localfleet_faster_whisper.servicer import FasterWhisper
from tests import fuzzing

PER_RPC = 40

#: the whole run happens in the first check's setup
pytestmark = pytest.mark.timeout(600)


def target(folder: Path, per_rpc: int = PER_RPC) -> fuzzing.Target:
    audio = fuzzing.workspace(folder).wav
    request = pb.TranscriptRequest(dst=str(audio), language="en", temperature=0.0)
    seeds = {"AudioTranscription": request, "AudioTranscriptionStream": request}
    return fuzzing.Target(
        "faster-whisper",
        fuzzing.served(FasterWhisper),
        [fuzzing.Stage(pb.ModelOptions(Model="tiny.en", Threads=2), seeds)],
        folder,
        rss_bound=800 * MiB,
        per_rpc=per_rpc,
        counts={"LoadModel": per_rpc // 2},
    )


def test_fuzz(fuzz_report: fuzzing.Report, fuzz_check: str) -> None:
    # The run is the fixture's (tests/conftest.py: this module's `target`, once); one test a check.
    fuzz_report.check(fuzz_check)
