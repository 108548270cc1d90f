"""diffusers' GenerateImage through gRPC against the same pipeline call in-process.

    python benchmarks/bench_diffusers.py [--size 128] [--steps 20] [--runs 5]

No image weights install offline, so the model is the tests' random Stable Diffusion (tests/diffusers/
models.py): its UNet is small, so a size of 128 and 20 steps make a call of about three seconds here, long
enough that fixed costs show as they would beside a real model's. Same folder, prompt, seed, steps and
size on both sides. The backend runs as a real `localfleet serve diffusers` process called as core calls
it (a new connection per call); its time includes writing the PNG to `dst` and syncing it. The floor is
`pipe(...)` in this process, returning a PIL image. Each round runs both sides once, in a shuffled order,
and the ratio is the median of the rounds' ratios (target >= 0.97).

Also printed: the server's RSS before LoadModel, after it, after a generation and after Free, beside
the RSS of a process that only imports the engine's libraries (what no Free can hand back).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # tests.diffusers.models: the tests' model builder

from localfleet.client import connect  # noqa: E402 (after the path above)
from localfleet.proto import backend_pb2 as pb  # noqa: E402
from localfleet.testing import spawn  # noqa: E402
from tests.diffusers.models import build_tiny_sd  # noqa: E402

PROMPT = "a lighthouse on a cliff at sunset, oil painting"
MiB = 1024 * 1024


def imports_alone() -> int:
    """RSS of a fresh process that only imports what LoadModel imports: memory Free cannot give back."""
    import subprocess

    code = (
        "import psutil, torch, diffusers, transformers, PIL.Image, av, localfleet_diffusers.engine; "
        "from diffusers import StableDiffusionPipeline; print(psutil.Process().memory_info().rss)"
    )
    return int(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    )


class Bare:
    def __init__(self, folder: Path) -> None:
        import torch
        from diffusers import DiffusionPipeline

        self.torch = torch
        self.pipe = DiffusionPipeline.from_pretrained(str(folder), dtype=torch.float32)
        self.pipe.set_progress_bar_config(disable=True)

    def run(self, size: int, steps: int, seed: int) -> float:
        started = time.perf_counter()
        with self.torch.inference_mode():  # as the backend's engine runs it (faster than no_grad alone)
            image = self.pipe(
                prompt=PROMPT,
                width=size,
                height=size,
                num_inference_steps=steps,
                generator=self.torch.Generator("cpu").manual_seed(seed),
                output_type="pil",
            ).images[0]
        elapsed = time.perf_counter() - started
        assert image.size == (size, size)
        return elapsed


async def through_grpc(addr: str, size: int, steps: int, seed: int, dst: Path) -> float:
    request = pb.GenerateImageRequest(
        positive_prompt=PROMPT, width=size, height=size, step=steps, seed=seed, dst=str(dst)
    )
    started = time.perf_counter()
    async with connect(addr) as client:
        result = await client.backend.GenerateImage(request)
    elapsed = time.perf_counter() - started
    assert result.success, result.message
    return elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
    opts = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-diffusers-"))
    folder = build_tiny_sd(work / "tiny-sd")
    bare = Bare(folder)
    bare.run(opts.size, 2, 0)  # warm-up: first-call allocations
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with spawn("diffusers", env=env, timeout=60) as process:
        server = psutil.Process(process.popen.pid)
        rss = {"before LoadModel": server.memory_info().rss}
        async with connect(process.addr) as client:
            loaded = await client.backend.LoadModel(pb.ModelOptions(Model=str(folder)))
            assert loaded.success, loaded.message
        rss["after LoadModel"] = server.memory_info().rss
        await through_grpc(process.addr, opts.size, 2, 0, work / "warm.png")
        rounds: list[tuple[float, float]] = []
        for n in range(opts.runs):
            order = ["grpc", "bare"]
            random.shuffle(order)
            took: dict[str, float] = {}
            for side in order:
                if side == "grpc":
                    took[side] = await through_grpc(
                        process.addr, opts.size, opts.steps, n + 1, work / "out.png"
                    )
                else:
                    took[side] = bare.run(opts.size, opts.steps, n + 1)
            rounds.append((took["grpc"], took["bare"]))
        rss["after generating"] = server.memory_info().rss
        async with connect(process.addr) as client:
            await client.backend.Free(pb.HealthMessage())
        rss["after Free"] = server.memory_info().rss
    grpc_s = statistics.median(g for g, _ in rounds)
    bare_s = statistics.median(b for _, b in rounds)
    ratios = sorted(b / g for g, b in rounds)  # speed through gRPC / speed in-process
    print(f"model: the tests' random SD, {opts.size}x{opts.size}, {opts.steps} steps, {opts.runs} rounds")
    print(f"GenerateImage through gRPC (PNG written and synced): {grpc_s:.3f} s")
    print(f"pipe(...) in-process:                                {bare_s:.3f} s")
    print(
        f"ratio in-process time / gRPC time (median of rounds): {statistics.median(ratios):.3f} "
        f"(rounds {ratios[0]:.3f}-{ratios[-1]:.3f})   target >= 0.97"
    )
    print("server RSS: " + ", ".join(f"{k} {v / MiB:.0f} MiB" for k, v in rss.items()))
    print(
        f"RSS after Free - before LoadModel: {(rss['after Free'] - rss['before LoadModel']) / MiB:+.0f} MiB"
    )
    print(f"a process that only imports torch and diffusers: {imports_alone() / MiB:.0f} MiB")


if __name__ == "__main__":
    asyncio.run(main())
