"""diffusers' GenerateImage through gRPC against the same pipeline call in-process.

    python benchmarks/bench_diffusers.py [--size 128] [--steps 20] [--runs 5]

No image weights install offline, so the model is the tests' random Stable Diffusion (tests/diffusers/
models.py): its UNet is small, so a size of 128 and 20 steps make a call of about two seconds here, long
enough that fixed costs show as they would beside a real model's. Same folder, prompt, seed, steps and
size on both sides; the floor is `pipe(...)` in this process under inference_mode, as the backend's
engine runs it. Rounds, ratio and memory figures: benchmarks/generation.py.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # benchmarks.generation, the tests' model builder

from benchmarks.generation import PROMPT, compare  # noqa: E402 (after the path above)
from localfleet.proto import backend_pb2 as pb  # noqa: E402
from tests.diffusers.models import build_tiny_sd  # noqa: E402


def bare(folder: Path) -> Callable[[int, int, int], float]:
    import torch
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(folder), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)

    def run(size: int, steps: int, seed: int) -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            image = pipe(
                prompt=PROMPT,
                width=size,
                height=size,
                num_inference_steps=steps,
                generator=torch.Generator("cpu").manual_seed(seed),
                output_type="pil",
            ).images[0]
        elapsed = time.perf_counter() - started
        assert image.size == (size, size)
        return elapsed

    return run


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
    opts = parser.parse_args()
    folder = build_tiny_sd(Path(tempfile.mkdtemp(prefix="bench-diffusers-")) / "tiny-sd")
    print(f"model: the tests' random SD, {opts.size}x{opts.size}, {opts.steps} steps, {opts.runs} rounds")
    await compare(
        "diffusers",
        pb.ModelOptions(Model=str(folder)),
        bare(folder),
        size=opts.size,
        steps=opts.steps,
        runs=opts.runs,
        imports="torch, diffusers, transformers, PIL.Image, av, localfleet_diffusers.engine",
        env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    )


if __name__ == "__main__":
    asyncio.run(main())
