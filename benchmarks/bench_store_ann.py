"""local-store with index:hnsw at scale, through gRPC (a grpcio client, as LocalAI core's), beside the exact
numpy scan in the same run. Takes minutes at the default size; not part of the tests.

    python benchmarks/bench_store_ann.py [--keys 1000000] [--dim 384] [--queries 200] [--ef-search 64]

Prints: build time (StoresSet of every key, graph included), StoresFind p50 through gRPC, recall@10
against the exact scan, the store's memory per key (Status), and the bare numpy scan's p50.
Data: unit-norm vectors around 1000 random centres (embedding-like), or Gaussian with --gaussian.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import grpc  # type: ignore[import-untyped]
import numpy as np
import numpy.typing as npt

from localfleet.proto import backend_pb2 as pb
from localfleet.testing import spawn

LIMITS = [("grpc.max_send_message_length", 50 << 20), ("grpc.max_receive_message_length", 50 << 20)]


def make(n: int, dim: int, gaussian: bool, seed: int) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    if gaussian:
        return rng.standard_normal((n, dim), dtype=np.float32)
    centres = rng.standard_normal((1000, dim), dtype=np.float32)
    return centres[rng.integers(0, 1000, n)] + 0.5 * rng.standard_normal((n, dim), dtype=np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--ef-search", type=int, default=64)
    parser.add_argument("--gaussian", action="store_true")
    args = parser.parse_args()
    n, dim = args.keys, args.dim
    keys = make(n, dim, args.gaussian, 0)
    queries = make(args.queries, dim, args.gaussian, 1)
    with (
        spawn("local-store", "--log-level", "ERROR", timeout=60) as proc,
        grpc.insecure_channel(proc.addr, LIMITS) as ch,
    ):

        def rpc(name: str, reply: Any) -> Any:
            return ch.unary_unary(
                f"/backend.Backend/{name}",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=reply.FromString,
            )

        options = ["index:hnsw", f"hnsw_ef_search:{args.ef_search}"]
        loaded = rpc("LoadModel", pb.Result)(pb.ModelOptions(Model="store://bench", Options=options))
        assert loaded.success, loaded.message
        put = rpc("StoresSet", pb.Result)
        started = time.perf_counter()
        for lo in range(0, n, 5000):
            rows = keys[lo : lo + 5000]
            values = [pb.StoresValue(Bytes=str(lo + i).encode()) for i in range(len(rows))]
            put(
                pb.StoresSetOptions(Keys=[pb.StoresKey(Floats=r) for r in rows.tolist()], Values=values),
                timeout=3600,
            )
        build = time.perf_counter() - started
        status = rpc("Status", pb.StatusResponse)(pb.HealthMessage())
        find = rpc("StoresFind", pb.StoresFindResult)
        requests = [pb.StoresFindOptions(Key=pb.StoresKey(Floats=q.tolist()), TopK=10) for q in queries]
        for r in requests[:20]:
            find(r)
        took, got = [], []
        for r in requests:
            start = time.perf_counter()
            reply = find(r)
            took.append(time.perf_counter() - start)
            got.append({int(v.Bytes) for v in reply.Values})
    kt = np.ascontiguousarray((keys / np.linalg.norm(keys, axis=1, keepdims=True)).T)
    bare, hits = [], 0
    for q, found in zip(queries, got, strict=True):
        start = time.perf_counter()
        top = np.argpartition(q @ kt, n - 10)[n - 10 :]
        bare.append(time.perf_counter() - start)
        hits += len(found & {int(i) for i in top})
    p50, flat = float(np.median(took)) * 1000, float(np.median(bare)) * 1000
    memory = status.memory.breakdown["stores"]
    print(f"local-store index:hnsw, {n} keys x {dim} ({'gaussian' if args.gaussian else 'clustered'})")
    print(f"build (StoresSet of all, graph incl.) {build:8.1f} s, {n / build:,.0f} keys/s")
    print(f"StoresFind p50 through gRPC        {p50:8.3f} ms   target <= 1 ms")
    print(f"bare numpy scan p50 (same run)     {flat:8.3f} ms   ratio hnsw/scan {p50 / flat:.3f}")
    print(f"recall@10 vs exact                 {hits / (10 * len(queries)):8.3f}     target >= 0.95")
    print(f"memory per key (Status 'stores')   {memory / n:8.0f} B  (raw keys {dim * 4} B)")


if __name__ == "__main__":
    main()
