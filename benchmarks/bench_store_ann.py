"""local-store through gRPC (a grpcio client, as LocalAI core's), flat and index:hnsw, beside the bare numpy
scan in a process of its own, interleaved query by query so machine noise hits both alike. Takes minutes at
the default size; not part of the tests.

    python benchmarks/bench_store_ann.py [--keys 1000000] [--dim 384] [--queries 200] [--index hnsw]
        [--ef-search 128] [--m 16] [--ef-construction 128] [--dtype f16] [--gaussian] [--ood]

--index flat: the exact scan through gRPC against the bare scan (issue 13, part 1: target ratio <= 1.25);
--index hnsw: the graph (build keys/s, p50, recall@10 against the exact scan, memory per key); both: both.
Data: unit-norm vectors around 1000 random centres (embedding-like) and queries drawn around the same
centres; --ood draws the queries around other centres (far from every key: near-ties, hard for a graph);
--gaussian: plain Gaussian keys and queries.
The bare scan is `q @ KT` plus argpartition with numpy's default BLAS threads, nothing around it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from typing import Any

import grpc  # type: ignore[import-untyped]
import numpy as np
import numpy.typing as npt
import psutil

from localfleet.proto import backend_pb2 as pb
from localfleet.testing import spawn

LIMITS = [("grpc.max_send_message_length", 50 << 20), ("grpc.max_receive_message_length", 50 << 20)]
F32 = npt.NDArray[np.float32]
BATCH = 5000
BLOCK = 50


def make(args: argparse.Namespace) -> tuple[F32, F32]:
    """The keys and the queries, the same in every process for the same arguments."""
    n, dim, count = args.keys, args.dim, args.queries
    rng = np.random.default_rng(0)
    if args.gaussian:
        queries = np.random.default_rng(1).standard_normal((count, dim), dtype=np.float32)
        return rng.standard_normal((n, dim), dtype=np.float32), queries
    centres = rng.standard_normal((1000, dim), dtype=np.float32)
    keys = centres[rng.integers(0, 1000, n)] + 0.5 * rng.standard_normal((n, dim), dtype=np.float32)
    qrng = np.random.default_rng(1)
    around = qrng.standard_normal((1000, dim), dtype=np.float32) if args.ood else centres
    noise = 0.5 * qrng.standard_normal((count, dim), dtype=np.float32)
    queries = around[qrng.integers(0, 1000, count)] + noise
    return keys, queries


def bare_worker(args: argparse.Namespace) -> None:
    """The bare scan: reads a query number a line, answers its own timing and the exact top 10."""
    keys, queries = make(args)
    n = keys.shape[0]
    kt = np.ascontiguousarray((keys / np.linalg.norm(keys, axis=1, keepdims=True)).T)
    del keys
    print("ready", flush=True)
    for line in sys.stdin:
        q = queries[int(line)]
        start = time.perf_counter()
        top = np.argpartition(q @ kt, n - 10)[n - 10 :]
        took = time.perf_counter() - start
        print(took, *top.tolist(), flush=True)


class Bare:
    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, *argv, "--bare-worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready"

    def scan(self, i: int) -> tuple[float, set[int]]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(f"{i}\n")
        self.proc.stdin.flush()
        took, *top = self.proc.stdout.readline().split()
        return float(took), {int(t) for t in top}

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait()


def section(args: argparse.Namespace, index: str, keys: F32, queries: F32, bare: Bare) -> None:
    n, dim = keys.shape
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

        options = [f"index:{index}"]
        if index == "hnsw":
            options += [
                f"hnsw_ef_search:{args.ef_search}",
                f"hnsw_m:{args.m}",
                f"hnsw_ef_construction:{args.ef_construction}",
                f"hnsw_dtype:{args.dtype}",
            ]
        loaded = rpc("LoadModel", pb.Result)(pb.ModelOptions(Model="store://bench", Options=options))
        assert loaded.success, loaded.message
        put = rpc("StoresSet", pb.Result)
        build = 0.0  # the calls only: building the client's messages is not the store's time
        for lo in range(0, n, BATCH):
            rows = keys[lo : lo + BATCH]
            request = pb.StoresSetOptions(
                Keys=[pb.StoresKey(Floats=r) for r in rows.tolist()],
                Values=[pb.StoresValue(Bytes=str(lo + i).encode()) for i in range(len(rows))],
            )
            started = time.perf_counter()
            put(request, timeout=3600)
            build += time.perf_counter() - started
        status = rpc("Status", pb.StatusResponse)(pb.HealthMessage())
        rss = psutil.Process(proc.popen.pid).memory_info().rss
        find = rpc("StoresFind", pb.StoresFindResult)
        requests = [pb.StoresFindOptions(Key=pb.StoresKey(Floats=q.tolist()), TopK=10) for q in queries]
        for i, r in enumerate(requests[:20]):
            find(r)
            bare.scan(i)
        took, flat, hits = [], [], 0
        server, scanner = psutil.Process(proc.popen.pid), psutil.Process(bare.proc.pid)
        cpu = [sum(server.cpu_times()[:2]), sum(scanner.cpu_times()[:2])]
        # Alternate blocks, not single queries: after each call OpenBLAS' workers spin on for ~0.1 s, and
        # the bare process' spinning would slow the very next gRPC call on a small machine.
        for lo in range(0, len(requests), BLOCK):
            got = []
            for r in requests[lo : lo + BLOCK]:
                start = time.perf_counter()
                reply = find(r)
                took.append(time.perf_counter() - start)
                got.append({int(v.Bytes) for v in reply.Values})
            for i, found in enumerate(got, lo):
                scan, exact = bare.scan(i)
                flat.append(scan)
                hits += len(found & exact)
        # CPU seconds a query, all threads: what a busy machine's scheduler cannot hide (spinning included).
        cpu = [(sum(server.cpu_times()[:2]) - cpu[0]) * 1000, (sum(scanner.cpu_times()[:2]) - cpu[1]) * 1000]
    p50, p50_bare = float(np.median(took)) * 1000, float(np.median(flat)) * 1000
    memory = status.memory.breakdown["stores"]
    print(f"-- index:{index} {' '.join(options[1:])}")
    print(f"StoresSet of all (batches of {BATCH})  {build:8.1f} s, {n / build:,.0f} keys/s")
    target = "target <= 1 ms" if index == "hnsw" else "target ratio <= 1.25"
    print(f"StoresFind p50 through gRPC        {p50:8.3f} ms   {target}")
    print(f"bare numpy scan p50 (own process)  {p50_bare:8.3f} ms   ratio gRPC/bare {p50 / p50_bare:.3f}")
    server_cpu, bare_cpu = cpu[0] / len(queries), cpu[1] / len(queries)
    print(f"CPU a query, all threads: server {server_cpu:.2f} ms, bare {bare_cpu:.2f} ms")
    print(f"  ratio server/bare                {server_cpu / bare_cpu:8.3f}")
    print(f"recall@10 vs exact                 {hits / (10 * len(queries)):8.3f}     target >= 0.95")
    print(f"memory per key (Status 'stores')   {memory / n:8.0f} B  (raw keys {dim * 4} B)")
    print(f"server RSS per key                 {rss / n:8.0f} B  (with the key-bytes lookup and Python)")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--index", choices=["flat", "hnsw", "both"], default="hnsw")
    parser.add_argument("--ef-search", type=int, default=128)
    parser.add_argument("--m", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=128)
    parser.add_argument("--dtype", choices=["f32", "f16", "i8"], default="f16")
    parser.add_argument("--gaussian", action="store_true")
    parser.add_argument("--ood", action="store_true")
    parser.add_argument("--bare-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_worker:
        bare_worker(args)
        return
    keys, queries = make(args)
    data = "gaussian" if args.gaussian else "clustered, queries " + ("elsewhere" if args.ood else "alike")
    print(f"local-store, {args.keys} keys x {args.dim} ({data}), TopK 10, {args.queries} queries")
    bare = Bare(sys.argv[1:])
    try:
        for index in ("flat", "hnsw") if args.index == "both" else (args.index,):
            section(args, index, keys, queries, bare)
    finally:
        bare.close()


if __name__ == "__main__":
    main()
