"""What the image-generation benchmarks share: GenerateImage through a real backend process against the
same engine call in-process, in shuffled rounds, and the server's memory around LoadModel and Free.

A benchmark gives `compare` the backend's name, its LoadModel request and a `bare(size, steps, seed)`
that runs the engine in this process and returns its seconds; `compare` prints the figures.
"""

from __future__ import annotations

import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import psutil

from localfleet.client import connect
from localfleet.proto import backend_pb2 as pb
from localfleet.testing import spawn

PROMPT = "a lighthouse on a cliff at sunset, oil painting"
MiB = 1024 * 1024


async def through_grpc(addr: str, size: int, steps: int, seed: int, dst: Path) -> float:
    """One GenerateImage as core makes it (a new connection): seconds until the reply, PNG written."""
    request = pb.GenerateImageRequest(
        positive_prompt=PROMPT, width=size, height=size, step=steps, seed=seed, dst=str(dst)
    )
    started = time.perf_counter()
    async with connect(addr) as client:
        result = await client.backend.GenerateImage(request)
    elapsed = time.perf_counter() - started
    assert result.success, result.message
    return elapsed


def imports_alone(modules: str) -> int:
    """RSS of a fresh process that only imports `modules` (comma-separated): what no Free gives back."""
    code = f"import psutil, {modules}; print(psutil.Process().memory_info().rss)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(run.stdout)


async def compare(
    backend: str,
    load: pb.ModelOptions,
    bare: Callable[[int, int, int], float],
    *,
    size: int,
    steps: int,
    runs: int,
    imports: str,
    env: Mapping[str, str] | None = None,
) -> None:
    work = Path(tempfile.mkdtemp(prefix=f"bench-{backend}-"))
    bare(size, 1, 0)  # warm-up: first-call allocations
    with spawn(backend, env=dict(env or {}), timeout=60) as process:
        server = psutil.Process(process.popen.pid)
        rss = {"before LoadModel": server.memory_info().rss}
        async with connect(process.addr) as client:
            loaded = await client.backend.LoadModel(load)
            assert loaded.success, loaded.message
        rss["after LoadModel"] = server.memory_info().rss
        await through_grpc(process.addr, size, 1, 0, work / "warm.png")
        rounds: list[tuple[float, float]] = []
        for n in range(runs):
            sides = ["grpc", "bare"]
            random.shuffle(sides)
            took: dict[str, float] = {}
            for side in sides:
                if side == "grpc":
                    took[side] = await through_grpc(process.addr, size, steps, n + 1, work / "out.png")
                else:
                    took[side] = bare(size, steps, n + 1)
            rounds.append((took["grpc"], took["bare"]))
        rss["after generating"] = server.memory_info().rss
        async with connect(process.addr) as client:
            await client.backend.Free(pb.HealthMessage())
        rss["after Free"] = server.memory_info().rss
    ratios = sorted(b / g for g, b in rounds)  # speed through gRPC / speed in-process
    grpc_s, bare_s = statistics.median(g for g, _ in rounds), statistics.median(b for _, b in rounds)
    print(f"GenerateImage through gRPC (PNG written and synced): {grpc_s:.3f} s")
    print(f"the same call in-process:                            {bare_s:.3f} s")
    print(
        f"ratio in-process time / gRPC time (median of rounds): {statistics.median(ratios):.3f} "
        f"(rounds {ratios[0]:.3f}-{ratios[-1]:.3f})   target >= 0.97"
    )
    print("server RSS: " + ", ".join(f"{k} {v / MiB:.0f} MiB" for k, v in rss.items()))
    freed = (rss["after Free"] - rss["before LoadModel"]) / MiB
    print(f"RSS after Free - before LoadModel: {freed:+.0f} MiB")
    print(f"a process that only imports the engine ({imports}): {imports_alone(imports) / MiB:.0f} MiB")
