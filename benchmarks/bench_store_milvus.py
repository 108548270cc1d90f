"""StoresSet throughput and StoresFind latency through gRPC: milvus-store beside local-store, and beside
pymilvus calling the same Milvus engine bare, all in one run.

    python benchmarks/bench_store_milvus.py [--keys 100000] [--dim 384] [--batch 1000] [--queries 30]

Every backend runs as a real `localfleet serve` process; milvus-store talks to a `milvus-lite server`
process on loopback (the engine a URI names, as a cluster would be). The same prebuilt requests go to
each. Prints keys/s for the fill, Find p50/p99 at TopK 10, and each figure as a ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from pymilvus import DataType, MilvusClient  # type: ignore[import-untyped]

from localfleet.client import Client, connect
from localfleet.proto import backend_pb2 as pb
from localfleet.testing import free_port, spawn


def engine_process(folder: Path, port: int) -> subprocess.Popen[bytes]:
    binary = shutil.which("milvus-lite", path=str(Path(sys.executable).parent)) or "milvus-lite"
    popen = subprocess.Popen(
        [binary, "server", "--data-dir", str(folder), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return popen
        except OSError:
            if time.monotonic() > deadline or popen.poll() is not None:
                raise RuntimeError("milvus-lite server did not start") from None
            time.sleep(0.05)  # a retry pause while the port opens


def requests(keys: np.ndarray, batch: int) -> list[pb.StoresSetOptions]:
    return [
        pb.StoresSetOptions(
            Keys=[pb.StoresKey(Floats=row) for row in keys[lo : lo + batch].tolist()],
            Values=[pb.StoresValue(Bytes=b"value-%d" % i) for i in range(lo, min(lo + batch, len(keys)))],
        )
        for lo in range(0, len(keys), batch)
    ]


async def through_grpc(
    client: Client, sets: list[pb.StoresSetOptions], finds: list[pb.StoresFindOptions]
) -> tuple[float, list[float]]:
    start = time.perf_counter()
    for batch in sets:
        await client.backend.StoresSet(batch)
    fill = time.perf_counter() - start
    await client.backend.StoresFind(finds[0])  # warm-up
    latencies = []
    for query in finds:
        start = time.perf_counter()
        found = await client.backend.StoresFind(query)
        latencies.append(time.perf_counter() - start)
        assert len(found.Keys) == 10
    return fill, latencies


def flush(uri: str, collection: str) -> None:
    client = MilvusClient(uri=uri)
    client.flush(collection)
    client.close()


def bare(uri: str, keys: np.ndarray, batch: int, queries: np.ndarray) -> tuple[float, list[float]]:
    """pymilvus straight to the engine, with the schema and calls milvus-store makes."""
    client = MilvusClient(uri=uri)
    schema = MilvusClient.create_schema(auto_id=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
    schema.add_field("key", DataType.FLOAT_VECTOR, dim=keys.shape[1])
    schema.add_field("value", DataType.VARCHAR, max_length=65535)
    index = MilvusClient.prepare_index_params()
    index.add_index("key", index_type="FLAT", metric_type="COSINE")
    client.create_collection("bare", schema=schema, index_params=index, consistency_level="Strong")
    start = time.perf_counter()
    for lo in range(0, len(keys), batch):
        rows: list[dict[str, Any]] = [
            {"id": hashlib.sha256(k.tobytes()).hexdigest(), "key": k, "value": f"value-{lo + i}"}
            for i, k in enumerate(keys[lo : lo + batch])
        ]
        client.upsert("bare", rows)
    fill = time.perf_counter() - start
    client.flush("bare")  # measured as the flushed milvus-store row is
    search = {"anns_field": "key", "output_fields": ["key", "value"], "limit": 10}
    client.search("bare", data=[queries[0]], **search)
    latencies = []
    for q in queries:
        start = time.perf_counter()
        client.search("bare", data=[q], consistency_level="Strong", **search)
        latencies.append(time.perf_counter() - start)
    client.close()
    return fill, latencies


def row(name: str, n: int, fill: float, latencies: list[float], base: tuple[float, float] | None) -> str:
    rate, p50, p99 = n / fill, float(np.median(latencies)), float(np.percentile(latencies, 99))
    ratio = f"{base[0] / rate:7.1f}x {p50 / base[1]:8.1f}x" if base else f"{'1.0x':>8} {'1.0x':>9}"
    return f"{name:34} {rate:10.0f} {p50 * 1000:10.2f} {p99 * 1000:10.2f}   {ratio}"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=30)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    keys = rng.standard_normal((args.keys, args.dim)).astype(np.float32)
    queries = rng.standard_normal((args.queries, args.dim)).astype(np.float32)
    sets = requests(keys, args.batch)
    finds = [pb.StoresFindOptions(Key=pb.StoresKey(Floats=q), TopK=10) for q in queries.tolist()]
    print(f"{args.keys} keys x {args.dim}, StoresSet batches of {args.batch}, StoresFind TopK 10")
    results: dict[str, tuple[float, list[float]]] = {}

    with spawn("local-store", timeout=60) as proc:
        async with connect(proc.addr) as client:
            assert (await client.backend.LoadModel(pb.ModelOptions(Model="store://bench"))).success
            results["local-store (gRPC)"] = await through_grpc(client, sets, finds)

    with tempfile.TemporaryDirectory() as folder:
        port = free_port()
        engine = engine_process(Path(folder) / "milvus", port)
        uri = f"http://127.0.0.1:{port}"
        try:
            with spawn("milvus-store", timeout=60) as proc:
                async with connect(proc.addr) as client:
                    load = pb.ModelOptions(Model="store://bench", Options=[f"uri:{uri}", "timeout:120"])
                    loaded = await client.backend.LoadModel(load)
                    assert loaded.success, loaded.message
                    results["milvus-store (gRPC, Milvus Lite)"] = await through_grpc(client, sets, finds)
                    # Milvus Lite searches rows still in its write buffer far slower than sealed ones;
                    # after a flush (a cluster seals on its own schedule) the same Finds, again.
                    await asyncio.to_thread(flush, uri, "localfleet_bench")
                    results["milvus-store after a flush"] = (
                        results["milvus-store (gRPC, Milvus Lite)"][0],
                        (await through_grpc(client, [], finds))[1],
                    )
            results["pymilvus -> Milvus Lite (bare)"] = await asyncio.to_thread(
                bare, uri, keys, args.batch, queries
            )
        finally:
            engine.kill()
            engine.wait()

    print(f"{'':34} {'set keys/s':>10} {'find p50':>10} {'find p99':>10}   vs local-store (set, find)")
    local = results["local-store (gRPC)"]
    base = (args.keys / local[0], float(np.median(local[1])))
    for name, (fill, latencies) in results.items():
        print(row(name, args.keys, fill, latencies, None if name.startswith("local") else base))
    milvus, engine_only = results["milvus-store after a flush"], results["pymilvus -> Milvus Lite (bare)"]
    print(
        f"milvus-store vs bare pymilvus, same engine: set {milvus[0] / engine_only[0]:.2f}x the time, "
        f"find p50 {np.median(milvus[1]) / np.median(engine_only[1]):.2f}x"
    )


if __name__ == "__main__":
    asyncio.run(main())
