"""In-process timings of the local-store engine (no gRPC), beside the raw numpy floor in the same run.

    python benchmarks/bench_store_engine.py [--keys 100000] [--dim 384] [--batch 1000] [--queries 200]

Prints: set of N keys in batches (memory, then persistent with sync=os and sync=always), find p50/p99
at N x dim for top_k 10 and 100 beside bare `q @ KT` + argpartition, get, delete, flush, reopen.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from localfleet_local_store.engine import VectorStore


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.2f} ms"


def samples(n: int, fn: Callable[[int], object]) -> list[float]:
    out = []
    for i in range(n):
        start = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - start)
    return out


def p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def set_one(store: VectorStore, queries: np.ndarray, i: int) -> None:
    store.set(queries[i : i + 1], [b"x"])


def fill(store: VectorStore, keys: np.ndarray, batch: int) -> float:
    start = time.perf_counter()
    for lo in range(0, keys.shape[0], batch):
        store.set(keys[lo : lo + batch], [b"value-%d" % i for i in range(lo, min(lo + batch, keys.shape[0]))])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    n, dim, batch = args.keys, args.dim, args.batch
    rng = np.random.default_rng(0)
    keys = rng.standard_normal((n, dim), dtype=np.float32)
    queries = rng.standard_normal((args.queries, dim), dtype=np.float32)
    print(f"local-store engine: {n} keys x {dim} dims, batches of {batch}")

    store = VectorStore.open(None)
    took = fill(store, keys, batch)
    print(f"set (memory)            {ms(took)} total, {n / took:10.0f} keys/s")

    # The floor: the same matrix-vector product and full argpartition with nothing around them,
    # interleaved query by query with the engine so machine noise hits both alike.
    kt = np.empty((dim, 1 << (n - 1).bit_length()), dtype=np.float32)
    kt[:, :n] = (keys / np.linalg.norm(keys, axis=1, keepdims=True)).T
    for top_k in (10, 100):
        found: list[float] = []
        bare: list[float] = []
        for q in queries:
            start = time.perf_counter()
            store.find(q, top_k)
            middle = time.perf_counter()
            np.argpartition(q @ kt[:, :n], n - top_k)[n - top_k :]
            found.append(middle - start)
            bare.append(time.perf_counter() - middle)
        print(f"find top_k={top_k:<4}        p50 {ms(p(found, 50))}  p99 {ms(p(found, 99))}")
        print(f"  bare q @ KT + argpart p50 {ms(p(bare, 50))}  p99 {ms(p(bare, 99))}")
    got = samples(100, lambda i: store.get(keys[i * 10 : i * 10 + 10]))
    print(f"get 10 keys             p50 {ms(statistics.median(got))}")
    deleted = samples(100, lambda i: store.delete(keys[i * 10 : i * 10 + 10]))
    print(f"delete 10 keys          p50 {ms(statistics.median(deleted))}")
    print(f"nbytes                  {store.nbytes() / 2**20:8.1f} MiB")
    store.close()

    for sync in ("os", "always"):
        with tempfile.TemporaryDirectory() as tmp:
            directory = Path(tmp) / "store"
            store = VectorStore.open(directory, sync=sync)
            took = fill(store, keys, batch)
            print(
                f"set (disk, sync={sync:<6})  {ms(took)} total, {n / took:10.0f} keys/s (compactions incl.)"
            )
            if sync == "always":
                one = samples(100, functools.partial(set_one, store, queries))
                print(f"set 1 key (sync=always) p50 {ms(statistics.median(one))}")
                start = time.perf_counter()
                store.flush()
                print(f"flush (snapshot)        {ms(time.perf_counter() - start)}")
                start = time.perf_counter()
                store.close()
                print(f"close (clean)           {ms(time.perf_counter() - start)}")
                start = time.perf_counter()
                store = VectorStore.open(directory)
                print(f"open (load snapshot)    {ms(time.perf_counter() - start)}, {len(store)} keys")
            store.close()


if __name__ == "__main__":
    main()
