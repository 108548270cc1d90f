"""transformers under the fuzzer (tests/fuzzing.py): every RPC, fixed seed, a size CI affords.

Embeddings and tokens are fuzzed on the bundled MiniLM, generation on a tiny Llama built here,
SoundGeneration on the tiny MusicGen of the test cache.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from localfleet.proto import backend_pb2 as pb
from localfleet.settings import MiB
from localfleet_transformers.servicer import Transformers
from tests import fuzzing
from tests.transformers.models import build_tiny_llama
from tests.transformers.tiny_musicgen import build_tiny_musicgen

PER_RPC = 80
#: new tokens a generation may ask for: more is slower, not different
MAX_TOKENS = 8
#: seconds of sound a SoundGeneration may ask for (the LoadModel limit: longer ones are refused)
MAX_SECONDS = 0.5

#: the whole run happens in the first check's setup
pytestmark = pytest.mark.timeout(600)


def target(folder: Path, per_rpc: int = PER_RPC) -> fuzzing.Target:
    # The tiny Llama lies in the folder requests may use, as a models volume would.
    llama = folder / "tiny-llama"
    if not (llama / "config.json").exists():
        build_tiny_llama(llama)
    music = folder / "tiny-musicgen"
    if not (music / "config.json").exists():
        shutil.copytree(build_tiny_musicgen(), music)
    text = pb.PredictOptions(Embeddings="A man is eating food.", Prompt="A man is eating food.")
    chat, templated = fuzzing.chat_seeds(MAX_TOKENS)
    stages = [
        fuzzing.Stage(pb.ModelOptions(Model="all-MiniLM-L6-v2"), {"Embedding": text, "TokenizeString": text}),
        fuzzing.Stage(
            pb.ModelOptions(Model=str(llama), Options=[f"max_tokens:{MAX_TOKENS}"]),
            {"Predict": chat, "PredictStream": templated},
        ),
        fuzzing.Stage(
            pb.ModelOptions(Model=str(music), Options=[f"max_seconds:{MAX_SECONDS}", "default_seconds:0.2"]),
            {"SoundGeneration": pb.SoundGenerationRequest(text="lofi beat", dst=str(folder / "beat.wav"))},
        ),
    ]
    return fuzzing.Target(
        "transformers",
        fuzzing.served(Transformers),
        stages,
        folder,
        rss_bound=1536 * MiB,
        per_rpc=per_rpc,
        counts={"LoadModel": per_rpc // 4},
        tame=fuzzing.capped_tokens(MAX_TOKENS),
    )


def test_fuzz(fuzz_report: fuzzing.Report, fuzz_check: str) -> None:
    # The run is the fixture's (tests/conftest.py: this module's `target`, once); one test a check.
    fuzz_report.check(fuzz_check)
