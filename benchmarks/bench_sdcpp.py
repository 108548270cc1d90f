"""stablediffusion-ggml's GenerateImage through gRPC against the same stable-diffusion.cpp call in-process.

    python benchmarks/bench_sdcpp.py [--size 128] [--steps 4] [--threads 2] [--runs 5]

No SD weights install offline, so the model is the tests' full-size random SD 1.x (tests/
stablediffusion_ggml/models.py, built once into the test cache): real SD 1.x compute, noise for images.
Same model, prompt, seed, steps, CFG scale and size on both sides; the floor is stable-diffusion-cpp-
python's `generate_image` in this process. Rounds, ratio and memory figures: benchmarks/generation.py.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # benchmarks.generation, the tests' model builder

from benchmarks.generation import PROMPT, compare  # noqa: E402 (after the path above)
from localfleet.proto import backend_pb2 as pb  # noqa: E402
from tests.stablediffusion_ggml.models import build_sd1_random  # noqa: E402

CFG = 7.0


def bare(folder: Path, threads: int) -> Callable[[int, int, int], float]:
    from stable_diffusion_cpp import StableDiffusion

    engine = StableDiffusion(model_path=str(folder), n_threads=threads, verbose=False)

    def run(size: int, steps: int, seed: int) -> float:
        started = time.perf_counter()
        image = engine.generate_image(
            prompt=PROMPT, width=size, height=size, sample_steps=steps, cfg_scale=CFG, seed=seed
        )[0]
        elapsed = time.perf_counter() - started
        assert image.size == (size, size)
        return elapsed

    return run


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    opts = parser.parse_args()
    folder = build_sd1_random()
    print(
        f"model: the tests' full-size random SD 1.x, {opts.size}x{opts.size}, {opts.steps} steps, CFG {CFG}, "
        f"{opts.threads} threads, {opts.runs} rounds"
    )
    await compare(
        "stablediffusion-ggml",
        pb.ModelOptions(Model=str(folder), CFGScale=CFG, Threads=opts.threads),
        bare(folder, opts.threads),
        size=opts.size,
        steps=opts.steps,
        runs=opts.runs,
        imports="stable_diffusion_cpp, PIL.Image, av, localfleet_stablediffusion_ggml.engine",
    )


if __name__ == "__main__":
    asyncio.run(main())
