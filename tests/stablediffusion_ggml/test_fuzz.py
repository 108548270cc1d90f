"""stablediffusion-ggml under the fuzzer (tests/fuzzing.py): every RPC, fixed seed, a size CI affords.

A run the backend accepts costs a second or more on the full-size model even at its smallest, so the
caps are tight LoadModel options (1 step, 64x64) and GenerateImage gets fewer calls than the rest."""

from __future__ import annotations

from pathlib import Path

import pytest

from localfleet.proto import backend_pb2 as pb
from localfleet.settings import MiB
from localfleet_stablediffusion_ggml.servicer import StableDiffusionGgml
from tests import fuzzing
from tests.stablediffusion_ggml.models import build_sd1_random

PER_RPC = 40
CAPS = ["max_steps:1", "max_pixels:4096", "max_frames:2", "threads:2"]

#: the whole run happens in the first check's setup
pytestmark = pytest.mark.timeout(900)


def target(folder: Path, per_rpc: int = PER_RPC) -> fuzzing.Target:
    fuzzing.workspace(folder)
    model = build_sd1_random()  # the test cache's, outside the folder: allowed as the models folder
    image = pb.GenerateImageRequest(
        positive_prompt="a red cat", width=64, height=64, step=1, seed=1, dst=str(folder / "out.png")
    )
    video = pb.GenerateVideoRequest(prompt="a cat", width=64, height=64, step=1, dst=str(folder / "out.mp4"))
    stages = [
        fuzzing.Stage(pb.ModelOptions(Model=str(model), CFGScale=1, Options=CAPS), {"GenerateImage": image}),
    ]
    return fuzzing.Target(
        "stablediffusion-ggml",
        fuzzing.served(StableDiffusionGgml),
        stages,
        folder,
        rss_bound=4096 * MiB,
        per_rpc=per_rpc,
        counts={"LoadModel": 6, "GenerateImage": 25, "GenerateVideo": per_rpc},
        known=[("GenerateVideo", video)],
        env={"LOCALFLEET_MODEL_PATH": str(model.parent)},
        unseeded={"GenerateVideo": "no video model (Wan) can be built here; every call meets the refusal"},
    )


def test_fuzz(fuzz_report: fuzzing.Report, fuzz_check: str) -> None:
    # The run is the fixture's (tests/conftest.py: this module's `target`, once); one test a check.
    fuzz_report.check(fuzz_check)
