"""diffusers under the fuzzer (tests/fuzzing.py): every RPC, fixed seed, a size CI affords, on the tiny
random pipelines built here. The caps are LoadModel options, so the fuzzer's huge sizes, steps and
frame counts meet the backend's own refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from localfleet.proto import backend_pb2 as pb
from localfleet.settings import MiB
from localfleet_diffusers.servicer import Diffusers
from tests import fuzzing
from tests.diffusers.models import build_tiny_animatediff, build_tiny_sd, build_tiny_upscaler

PER_RPC = 60
CAPS = ["max_steps:3", "max_pixels:16384", "max_frames:4", "frames:4"]

#: the whole run happens in the first check's setup
pytestmark = pytest.mark.timeout(600)


def target(folder: Path, per_rpc: int = PER_RPC) -> fuzzing.Target:
    fuzzing.workspace(folder)
    # The models lie in the folder requests may use, as a models volume would.
    sd = build_tiny_sd(folder / "tiny-sd")
    animatediff = build_tiny_animatediff(folder / "tiny-animatediff")
    upscaler = build_tiny_upscaler(folder / "tiny-upscaler")
    picture = folder / "picture.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(picture)
    (folder / "truncated.png").write_bytes(picture.read_bytes()[:200])
    image = pb.GenerateImageRequest(
        positive_prompt="a red cat", width=64, height=64, step=2, seed=1, dst=str(folder / "out.png")
    )
    clip = pb.GenerateVideoRequest(
        prompt="a cat", width=64, height=64, step=2, num_frames=4, dst=str(folder / "out.mp4")
    )
    upscale = pb.UpscaleImageRequest(src=str(folder / "small.png"), dst=str(folder / "big.png"))
    Image.open(picture).resize((32, 32)).save(folder / "small.png")
    stages = [
        fuzzing.Stage(pb.ModelOptions(Model=str(sd), Options=CAPS), {"GenerateImage": image}),
        fuzzing.Stage(pb.ModelOptions(Model=str(animatediff), Options=CAPS), {"GenerateVideo": clip}),
        fuzzing.Stage(
            pb.ModelOptions(Model=str(upscaler), Options=[*CAPS, "upscale_steps:2"]),
            {"UpscaleImage": upscale},
        ),
    ]
    return fuzzing.Target(
        "diffusers",
        fuzzing.served(Diffusers),
        stages,
        folder,
        rss_bound=1536 * MiB,
        per_rpc=per_rpc,
        counts={"LoadModel": per_rpc // 4},
        env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    )


def test_fuzz(fuzz_report: fuzzing.Report, fuzz_check: str) -> None:
    # The run is the fixture's (tests/conftest.py: this module's `target`, once); one test a check.
    fuzz_report.check(fuzz_check)
