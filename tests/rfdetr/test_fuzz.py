"""rfdetr under the fuzzer (tests/fuzzing.py): every RPC, fixed seed, a size CI affords, on the real
YOLOv8n ONNX detector (the cheaper engine: Detect's checks are the servicer's, shared by both)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from localfleet.proto import backend_pb2 as pb
from localfleet.settings import MiB
from localfleet_rfdetr.servicer import RFDetr
from tests import fuzzing
from tests.rfdetr.images import b64, nudenet_onnx

PER_RPC = 60
#: caps the image a fuzzed request may decode to, so a huge one meets the backend's refusal
CAPS = ["max_pixels:1048576", "threads:1"]

#: the whole run happens in the first check's setup
pytestmark = pytest.mark.timeout(600)


def target(folder: Path, per_rpc: int = PER_RPC) -> fuzzing.Target:
    import skimage

    fuzzing.workspace(folder)
    # The model lies in the folder requests may use, as a models volume would.
    onnx = folder / "detector.onnx"
    onnx.write_bytes(nudenet_onnx().read_bytes())
    with Image.open(Path(skimage.__file__).parent / "data" / "astronaut.png") as photo:
        small = photo.convert("RGB").resize((128, 128))
    seed = pb.DetectOptions(src=b64(small, "JPEG"), threshold=0.3)
    stages = [fuzzing.Stage(pb.ModelOptions(Model=str(onnx), Options=CAPS), {"Detect": seed})]
    return fuzzing.Target(
        "rfdetr",
        fuzzing.served(RFDetr),
        stages,
        folder,
        rss_bound=1024 * MiB,
        per_rpc=per_rpc,
        counts={"LoadModel": per_rpc // 4},
        env={"HF_HUB_OFFLINE": "1"},
    )


def test_fuzz(fuzz_report: fuzzing.Report, fuzz_check: str) -> None:
    # The run is the fixture's (tests/conftest.py: this module's `target`, once); one test a check.
    fuzz_report.check(fuzz_check)
