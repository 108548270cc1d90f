"""bark under the fuzzer (tests/fuzzing.py): every RPC, fixed seed, a size CI affords, on the tiny random
Bark (tests/bark/models.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from localfleet.proto import backend_pb2 as pb
from localfleet.settings import MiB
from localfleet_bark.servicer import Bark
from tests import fuzzing
from tests.bark.models import cached

PER_RPC = 30
#: TTS speaks all its text before it answers, a Bark generation a sentence (TTSStream is cancelled
#: after a few chunks): a bound on the work, not on what is valid
TTS_CHARS = 120

#: the whole run happens in the first check's setup
pytestmark = pytest.mark.timeout(600)


def target(folder: Path, per_rpc: int = PER_RPC) -> fuzzing.Target:
    fuzzing.workspace(folder)
    model = folder / "bark-model"  # LoadModel reads only inside the folder
    if not model.exists():
        shutil.copytree(cached(), model)
    seeds = {
        **fuzzing.speech_seeds(folder, voice="announcer"),
        "SoundGeneration": pb.SoundGenerationRequest(
            text="[music] rain", dst=str(folder / "rain.wav"), duration=0.3, temperature=0.7
        ),
    }
    return fuzzing.Target(
        "bark",
        fuzzing.served(Bark),
        [fuzzing.Stage(pb.ModelOptions(Model=str(model)), seeds)],
        folder,
        rss_bound=1500 * MiB,
        per_rpc=per_rpc,
        counts={"LoadModel": per_rpc // 3},
        max_replies=2,
        tame=fuzzing.capped_text(TTS_CHARS),
        env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )


def test_fuzz(fuzz_report: fuzzing.Report, fuzz_check: str) -> None:
    # The run is the fixture's (tests/conftest.py: this module's `target`, once); one test a check.
    fuzz_report.check(fuzz_check)
