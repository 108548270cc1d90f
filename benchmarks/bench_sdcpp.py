"""stablediffusion-ggml's GenerateImage through gRPC against the same stable-diffusion.cpp call in-process.

    python benchmarks/bench_sdcpp.py [--size 128] [--steps 4] [--runs 5]

No SD weights install offline, so the model is the tests' full-size random SD 1.x (tests/
stablediffusion_ggml/models.py, built once into the test cache): real SD 1.x compute, noise for images.
Same model, prompt, seed, steps, CFG scale and size on both sides. The backend runs as a real
`localfleet serve stablediffusion-ggml` process called as core calls it (a new connection per call); its
time includes writing the PNG to `dst` and syncing it. The floor is stable-diffusion-cpp-python's
`generate_image` in this process, returning a PIL image; the two never run at once. Each round runs
both sides once, in a shuffled order, and the ratio is the median of the rounds' ratios (target >=
0.97).

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
    sys.path.insert(0, str(ROOT))  # tests.stablediffusion_ggml.models: the tests' model builder

from localfleet.client import connect  # noqa: E402 (after the path above)
from localfleet.proto import backend_pb2 as pb  # noqa: E402
from localfleet.testing import spawn  # noqa: E402
from tests.stablediffusion_ggml.models import build_sd1_random  # noqa: E402

PROMPT = "a lighthouse on a cliff at sunset, oil painting"
MiB = 1024 * 1024
CFG = 7.0


def imports_alone() -> int:
    """RSS of a fresh process that only imports what LoadModel imports: memory Free cannot give back."""
    import subprocess

    code = (
        "import psutil, stable_diffusion_cpp, PIL.Image, av, localfleet_stablediffusion_ggml.engine; "
        "print(psutil.Process().memory_info().rss)"
    )
    return int(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    )


class Bare:
    def __init__(self, folder: Path, threads: int) -> None:
        from stable_diffusion_cpp import StableDiffusion

        self.engine = StableDiffusion(model_path=str(folder), n_threads=threads, verbose=False)

    def run(self, size: int, steps: int, seed: int) -> float:
        started = time.perf_counter()
        image = self.engine.generate_image(
            prompt=PROMPT, width=size, height=size, sample_steps=steps, cfg_scale=CFG, seed=seed
        )[0]
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
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    opts = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-sdcpp-"))
    folder = build_sd1_random()
    bare = Bare(folder, opts.threads)
    bare.run(opts.size, 1, 0)  # warm-up: first-call allocations
    with spawn("stablediffusion-ggml", timeout=60) as process:
        server = psutil.Process(process.popen.pid)
        rss = {"before LoadModel": server.memory_info().rss}
        async with connect(process.addr) as client:
            loaded = await client.backend.LoadModel(
                pb.ModelOptions(Model=str(folder), CFGScale=CFG, Threads=opts.threads)
            )
            assert loaded.success, loaded.message
        rss["after LoadModel"] = server.memory_info().rss
        await through_grpc(process.addr, opts.size, 1, 0, work / "warm.png")
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
    print(
        f"model: the tests' full-size random SD 1.x, {opts.size}x{opts.size}, {opts.steps} steps, CFG {CFG}, "
        f"{opts.threads} threads, {opts.runs} rounds"
    )
    print(f"GenerateImage through gRPC (PNG written and synced): {grpc_s:.3f} s")
    print(f"generate_image in-process:                           {bare_s:.3f} s")
    print(
        f"ratio in-process time / gRPC time (median of rounds): {statistics.median(ratios):.3f} "
        f"(rounds {ratios[0]:.3f}-{ratios[-1]:.3f})   target >= 0.97"
    )
    print("server RSS: " + ", ".join(f"{k} {v / MiB:.0f} MiB" for k, v in rss.items()))
    print(
        f"RSS after Free - before LoadModel: {(rss['after Free'] - rss['before LoadModel']) / MiB:+.0f} MiB"
    )
    print(f"a process that only imports stable-diffusion.cpp: {imports_alone() / MiB:.0f} MiB")


if __name__ == "__main__":
    asyncio.run(main())
