"""coqui under the fuzzer (tests/fuzzing.py): every RPC, fixed seed, a size CI affords."""

from __future__ import annotations

from pathlib import Path

import pytest

from localfleet.proto import backend_pb2 as pb
from localfleet.settings import MiB
from localfleet_coqui.servicer import Coqui
from tests import fuzzing
from tests.coqui.models import build_vits

PER_RPC = 40
#: TTS speaks all its text before it answers (TTSStream is cancelled after a few chunks): a bound on
#: the work, not on what is valid
TTS_CHARS = 400

#: the whole run happens in the first check's setup
pytestmark = pytest.mark.timeout(600)


def target(folder: Path, per_rpc: int = PER_RPC) -> fuzzing.Target:
    fuzzing.workspace(folder)
    model = build_vits(folder / "coqui-model", speakers=True)  # LoadModel reads only inside the folder
    seeds = fuzzing.speech_seeds(folder, voice="bob", language="fr")
    return fuzzing.Target(
        "coqui",
        fuzzing.served(Coqui),
        [fuzzing.Stage(pb.ModelOptions(Model=str(model)), seeds)],
        folder,
        rss_bound=1500 * MiB,
        per_rpc=per_rpc,
        counts={"LoadModel": per_rpc // 2},
        max_replies=2,
        tame=fuzzing.capped_text(TTS_CHARS),
    )


def test_fuzz(fuzz_report: fuzzing.Report, fuzz_check: str) -> None:
    # The run is the fixture's (tests/conftest.py: this module's `target`, once); one test a check.
    fuzz_report.check(fuzz_check)
