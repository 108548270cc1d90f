"""mlx-vlm under the fuzzer (tests/fuzzing.py): every RPC, fixed seed, a size CI affords, on the tiny
LLaVA built here, images included."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from localfleet.proto import backend_pb2 as pb
from localfleet.settings import MiB
from localfleet_mlx_vlm.servicer import MlxVlm
from tests import fuzzing
from tests.mlx_vlm.models import build_tiny_llava, png

PER_RPC = 80
#: new tokens a generation may ask for: more is slower, not different
MAX_TOKENS = 8

#: the whole run happens in the first check's setup
pytestmark = pytest.mark.timeout(600)


def target(folder: Path, per_rpc: int = PER_RPC) -> fuzzing.Target:
    # The model lies in the folder requests may use, as a models volume would.
    llava = folder / "tiny-llava"
    if not (llava / "config.json").exists():
        build_tiny_llava(llava)
    picture = base64.b64encode(png(0)).decode()
    described = pb.PredictOptions(
        Prompt="<image>Describe the image.", Images=[picture], Tokens=MAX_TOKENS, Temperature=0.7, Seed=1
    )
    templated = pb.PredictOptions(
        Messages=[pb.Message(role="user", content="What is in the picture?")],
        UseTokenizerTemplate=True,
        Images=[picture],
        Tokens=MAX_TOKENS,
    )
    stages = [
        fuzzing.Stage(
            pb.ModelOptions(Model=str(llava), Options=[f"max_tokens:{MAX_TOKENS}"]),
            {"Predict": described, "PredictStream": templated, "TokenizeString": described},
        ),
    ]
    return fuzzing.Target(
        "mlx-vlm",
        fuzzing.served(MlxVlm),
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
