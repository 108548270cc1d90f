"""bark-cpp under the fuzzer (tests/fuzzing.py): every RPC, fixed seed, a size CI affords."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf.message import Message

from localfleet.proto import backend_pb2 as pb
from localfleet.settings import MiB
from localfleet_bark_cpp.servicer import BarkCpp
from tests import fuzzing
from tests.bark_cpp.models import build

PER_RPC = 40
OPTIONS = ["semantic_tokens:16", "threads:1"]
#: TTS speaks all its text before it answers (TTSStream is cancelled after a few chunks): a bound on
#: the work, not on what is valid
TTS_CHARS = 400

_capped = fuzzing.capped_text(TTS_CHARS)

#: the whole run happens in the first check's setup
pytestmark = pytest.mark.timeout(600)


def tame(rpc: str, request: Message) -> None:
    _capped(rpc, request)
    if rpc == "LoadModel" and isinstance(request, pb.ModelOptions):
        # The default 681 semantic tokens a sentence make each fuzzed TTS seconds long; one thread, as
        # in tests/bark_cpp/test_servicer.py (ggml's spinning workers on busy cores).
        request.Options.extend(OPTIONS)


def target(folder: Path, per_rpc: int = PER_RPC) -> fuzzing.Target:
    fuzzing.workspace(folder)
    model = build(folder / "bark-tiny.bin")  # LoadModel reads only inside the folder
    seeds = fuzzing.speech_seeds(folder, language="en")
    return fuzzing.Target(
        "bark-cpp",
        fuzzing.served(BarkCpp),
        [fuzzing.Stage(pb.ModelOptions(Model=str(model), Options=OPTIONS), seeds)],
        folder,
        rss_bound=800 * MiB,
        per_rpc=per_rpc,
        counts={"LoadModel": per_rpc // 2},
        max_replies=2,
        tame=tame,
    )


def test_fuzz(fuzz_report: fuzzing.Report, fuzz_check: str) -> None:
    # The run is the fixture's (tests/conftest.py: this module's `target`, once); one test a check.
    fuzz_report.check(fuzz_check)
