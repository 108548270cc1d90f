"""Figures for the foundation's targets, each beside its floor measured in the same run.

    python benchmarks/bench_runtime.py [--keys 100000] [--dim 384]

Prints: start to Health OK and idle RSS; Health p50 against a bare grpclib Health server (same client,
same run); Health p50 while StoresFind calls keep the backend busy; StoresSet of N keys and StoresFind
p50 at N x dim through gRPC, beside the bare engine's find.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import psutil

from localfleet.client import connect
from localfleet.proto import backend_pb2 as pb
from localfleet.testing import free_port

HERE = Path(__file__).resolve().parent


def percentile(samples: list[float], q: float) -> float:
    return float(np.percentile(np.array(samples) * 1000, q))


async def timed(n: int, fn: Callable[[], Awaitable[object]]) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - started)
    return samples


def start_backend(addr: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "localfleet", "serve", "local-store", "--addr", addr, "--log-level", "ERROR"],
        env={**os.environ, **(env or {})},
    )


async def first_ok(addr: str, started: float, limit: float = 30) -> float:
    while time.perf_counter() - started < limit:
        try:
            async with connect(addr) as client:
                if await client.healthy(timeout=1):
                    return time.perf_counter() - started
        except (OSError, TimeoutError):
            await asyncio.sleep(0.002)
    raise TimeoutError(f"{addr} never answered Health")


async def bench_start(runs: int) -> None:
    times, rss = [], []
    for _ in range(runs):
        addr = f"127.0.0.1:{free_port()}"
        started = time.perf_counter()
        proc = start_backend(addr)
        try:
            times.append(await first_ok(addr, started))
            rss.append(psutil.Process(proc.pid).memory_info().rss / 2**20)
        finally:
            proc.terminate()
            proc.wait()
    print(
        f"start to Health OK: median {statistics.median(times) * 1000:.0f} ms over {runs} runs "
        f"(max {max(times) * 1000:.0f} ms)   target <= 1000 ms"
    )
    print(f"idle RSS before LoadModel: median {statistics.median(rss):.1f} MiB   target <= 60 MiB")


async def health_p50(addr: str, n: int) -> tuple[float, float]:
    async with connect(addr) as client:
        await timed(100, lambda: client.backend.Health(pb.HealthMessage()))  # warm up
        samples = await timed(n, lambda: client.backend.Health(pb.HealthMessage()))
    fresh = []
    for _ in range(n // 10):  # core opens a new connection per call
        started = time.perf_counter()
        async with connect(addr) as client:
            await client.backend.Health(pb.HealthMessage())
        fresh.append(time.perf_counter() - started)
    return percentile(samples, 50), percentile(fresh, 50)


async def bench_health(n: int) -> None:
    bare_port = free_port()
    floor_script = str(HERE / "bare_health.py")
    bare = subprocess.Popen([sys.executable, floor_script, str(bare_port)], stdout=subprocess.PIPE)
    addr = f"127.0.0.1:{free_port()}"
    fleet = start_backend(addr)
    try:
        assert bare.stdout is not None
        bare.stdout.readline()
        await first_ok(addr, time.perf_counter())
        floor, floor_fresh = await health_p50(f"127.0.0.1:{bare_port}", n)
        ours, ours_fresh = await health_p50(addr, n)
    finally:
        bare.terminate()
        fleet.terminate()
        bare.wait()
        fleet.wait()
    print(
        f"Health p50, one connection: localfleet {ours:.3f} ms, bare grpclib {floor:.3f} ms, "
        f"ratio {ours / floor:.2f}   target <= 1.5"
    )
    print(
        f"Health p50, new connection per call (as core): localfleet {ours_fresh:.3f} ms, "
        f"bare grpclib {floor_fresh:.3f} ms, ratio {ours_fresh / floor_fresh:.2f}"
    )


def _busy_loop(addr: str, dim: int, seconds: float, concurrency: int) -> None:
    async def worker(deadline: float) -> None:
        rng = np.random.default_rng()
        async with connect(addr) as client:
            while time.monotonic() < deadline:
                query = pb.StoresKey(Floats=rng.standard_normal(dim).astype(np.float32).tolist())
                await client.backend.StoresFind(pb.StoresFindOptions(Key=query, TopK=10))

    async def main() -> None:
        deadline = time.monotonic() + seconds
        await asyncio.gather(*(worker(deadline) for _ in range(concurrency)))

    asyncio.run(main())


async def fill(addr: str, data: np.ndarray, batch: int) -> float:
    started = time.perf_counter()
    async with connect(addr) as client:
        for start in range(0, len(data), batch):
            rows = data[start : start + batch]
            request = pb.StoresSetOptions(
                Keys=[pb.StoresKey(Floats=r) for r in rows.tolist()],
                Values=[pb.StoresValue(Bytes=str(start + i).encode()) for i in range(len(rows))],
            )
            result = await client.backend.StoresSet(request, timeout=300)
            assert result.success, result.message
    return time.perf_counter() - started


async def bench_store(keys: int, dim: int, queries: int) -> None:
    from localfleet_local_store.engine import VectorStore

    rng = np.random.default_rng(0)
    data = rng.standard_normal((keys, dim)).astype(np.float32)
    probe = rng.standard_normal((queries, dim)).astype(np.float32)
    addr = f"127.0.0.1:{free_port()}"
    with tempfile.TemporaryDirectory() as tmp:
        proc = start_backend(addr, {"LOCALFLEET_STORE_DIR": tmp})
        try:
            await first_ok(addr, time.perf_counter())
            async with connect(addr) as client:
                result = await client.backend.LoadModel(pb.ModelOptions(Model="store://bench"))
                assert result.success, result.message
            elapsed = await fill(addr, data, 5000)
            print(
                f"StoresSet {keys} keys x {dim} (batches of 5000, persistent, fsync per batch): "
                f"{elapsed:.1f} s, {keys / elapsed:,.0f} keys/s"
            )
            async with connect(addr) as client:
                find = [pb.StoresFindOptions(Key=pb.StoresKey(Floats=q.tolist()), TopK=10) for q in probe]
                it = iter(find * 100)
                warm_until = time.monotonic() + 2.0  # steady state: page faults and CPU clocks settled
                while time.monotonic() < warm_until:
                    await client.backend.StoresFind(next(it))
                samples = await timed(queries, lambda: client.backend.StoresFind(next(it)))
                spawner = multiprocessing.get_context("spawn")
                busy = spawner.Process(target=_busy_loop, args=(addr, dim, 6.0, 4))
                busy.start()
                await asyncio.sleep(1.0)  # let the load reach steady state
                health = await timed(300, lambda: client.backend.Health(pb.HealthMessage()))
                busy.join()
        finally:
            proc.terminate()
            proc.wait()
    engine = VectorStore.open(None)
    for start in range(0, keys, 5000):
        engine.set(data[start : start + 5000], [b""] * len(data[start : start + 5000]))
    # Floors, alternating query by query: the engine alone, and the bare numpy product it cannot beat.
    kt = np.ascontiguousarray((data / np.linalg.norm(data, axis=1, keepdims=True)).T)
    bare, floor = [], []
    for q in probe:
        started = time.perf_counter()
        engine.find(q, 10)
        bare.append(time.perf_counter() - started)
        started = time.perf_counter()
        sims = q @ kt
        np.argpartition(sims, -10)[-10:]
        floor.append(time.perf_counter() - started)
    p50 = percentile(samples, 50)
    print(
        f"StoresFind p50 at {keys} x {dim} through gRPC: {p50:.2f} ms "
        f"(p95 {percentile(samples, 95):.2f} ms); "
        f"engine alone {percentile(bare, 50):.2f} ms; "
        f"numpy q @ K.T + argpartition {percentile(floor, 50):.2f} ms   target <= 5 ms"
    )
    print(
        f"Health p50 while 4 clients run StoresFind back to back: {percentile(health, 50):.2f} ms "
        f"(p95 {percentile(health, 95):.2f} ms)   target < 5 ms"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--health-calls", type=int, default=2000)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}")
    await bench_start(5)
    await bench_health(args.health_calls)
    await bench_store(args.keys, args.dim, args.queries)


if __name__ == "__main__":
    asyncio.run(main())
