"""The optional HNSW index (index:hnsw): right after upserts and deletes, across restarts, per namespace."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from localfleet.client import Client
from localfleet.proto import backend_pb2 as pb
from localfleet.testing import serving
from localfleet_local_store import ann
from localfleet_local_store.ann import IndexConfig
from localfleet_local_store.engine import VectorStore
from localfleet_local_store.servicer import LocalStore

F32 = npt.NDArray[np.float32]
HNSW = IndexConfig("hnsw", m=16, ef_construction=64, ef_search=64)
N, DIM = 4000, 16  # above the size where find uses the graph rather than a scan


def data(n: int = N, seed: int = 0) -> F32:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def exact_top(keys: F32, query: F32, k: int) -> list[int]:
    cos = keys @ query / (np.linalg.norm(keys, axis=1) * np.linalg.norm(query))
    return [int(i) for i in np.argsort(-cos)[:k]]


def recall(store: VectorStore, keys: F32, names: list[int], queries: F32, k: int = 10) -> float:
    hits = 0
    for q in queries:
        _, values, sims = store.find(q, k)
        assert list(sims) == sorted(sims, reverse=True)
        hits += len({int(v) for v in values} & {names[i] for i in exact_top(keys, q, k)})
    return hits / (k * len(queries))


def filled(directory: Path | None = None) -> tuple[VectorStore, F32]:
    store = VectorStore.open(directory, sync="os", index=HNSW)
    keys = data()
    for lo in range(0, N, 1000):
        store.set(keys[lo : lo + 1000], [str(i).encode() for i in range(lo, lo + 1000)])
    return store, keys


def test_hnsw_find_agrees_with_the_exact_scan_and_skips_the_transposed_copy() -> None:
    store, keys = filled()
    flat = VectorStore.open(None)
    flat.set(keys, [b""] * N)
    assert recall(store, keys, list(range(N)), data(40, seed=1)) >= 0.95
    # The graph replaces the scan's (dim, n) matrix: less memory than flat's copy of the keys.
    assert store._kt.size == 0
    assert flat._kt.shape[1] >= N
    _, _, sims = store.find(keys[7], 1)
    assert sims[0] == pytest.approx(1.0, abs=1e-6)


def test_deletes_and_upserts_keep_the_index_right() -> None:
    store, keys = filled()
    gone = keys[: N // 2]
    store.delete(gone)
    for q in gone[:50]:  # a deleted key is never found, even by its own vector
        _, values, _ = store.find(q, 5)
        assert all(int(v) >= N // 2 for v in values)
    store.set(keys[N // 2 : N // 2 + 10], [b"new"] * 10)  # upsert: same keys, new values
    _, values, _ = store.find(keys[N // 2 + 3], 1)
    assert values == [b"new"]
    fresh = data(1000, seed=5)
    store.set(fresh, [str(10_000 + i).encode() for i in range(1000)])
    live = np.concatenate([keys[N // 2 :], fresh])
    names = list(range(N // 2, N)) + list(range(10_000, 11_000))
    names[:10] = [-1] * 10  # the upserted ten answer b"new"
    hits = 0
    for q in data(30, seed=2):
        _, values, _ = store.find(q, 10)
        want = {names[i] for i in exact_top(live, q, 10)}
        hits += len({-1 if v == b"new" else int(v) for v in values} & want)
    assert hits / 300 >= 0.95
    store.delete(live)
    assert len(store) == 0
    store.set(np.ones((1, 3), np.float32), [b"3d"])  # an emptied store takes a new dimension
    assert store.find(np.ones(3, np.float32), 1)[1] == [b"3d"]


def test_the_saved_index_is_used_when_it_matches_and_rebuilt_when_not(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, keys = filled(tmp_path)
    store.delete(keys[:100])
    store.close()
    assert (tmp_path / ann.META_NAME).exists()
    caplog.set_level("INFO")
    reopened = VectorStore.open(tmp_path, index=HNSW)
    assert "rebuilding" not in caplog.text
    assert recall(reopened, keys[100:], list(range(100, N)), data(20, seed=3)) >= 0.95
    reopened.set(data(5, seed=9), [b"after"] * 5)  # journaled after the snapshot: replayed into the graph
    reopened._persist.close()  # type: ignore[union-attr]  # a crash: no flush, the journal holds the set
    crashed = VectorStore.open(tmp_path, index=HNSW)
    assert crashed.find(data(5, seed=9)[2], 1)[1] == [b"after"]
    crashed.close()
    # A damaged index file (or one for other parameters) is rebuilt from the store, never trusted.
    blob = bytearray((tmp_path / ann.INDEX_NAME).read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (tmp_path / ann.INDEX_NAME).write_bytes(bytes(blob))
    caplog.clear()
    rebuilt = VectorStore.open(tmp_path, index=HNSW)
    assert "does not match its meta" in caplog.text
    assert rebuilt.find(data(5, seed=9)[2], 1)[1] == [b"after"]
    rebuilt.close()
    caplog.clear()
    other = VectorStore.open(tmp_path, index=IndexConfig("hnsw", m=8, ef_construction=64, ef_search=64))
    assert "other parameters" in caplog.text
    assert len(other) == N - 100 + 5
    other.close()


def test_a_crash_between_snapshot_and_index_save_rebuilds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, keys = filled(tmp_path)
    store.flush()
    meta = (tmp_path / ann.META_NAME).read_bytes()
    store.delete(keys[:10])
    store.flush()  # a newer snapshot; put the older meta back, as if the process died before saving
    (tmp_path / ann.META_NAME).write_bytes(meta)
    store._persist.close()  # type: ignore[union-attr]
    caplog.set_level("INFO")
    reopened = VectorStore.open(tmp_path, index=HNSW)
    assert "saved for another snapshot" in caplog.text
    assert len(reopened) == N - 10
    for q in keys[:10]:
        assert all(int(v) >= 10 for v in reopened.find(q, 3)[1])
    reopened.close()


def test_switching_an_open_store_between_flat_and_hnsw() -> None:
    store = VectorStore.open(None)
    keys = data()
    store.set(keys, [str(i).encode() for i in range(N)])
    store.set_index(HNSW)
    assert store._kt.size == 0
    assert recall(store, keys, list(range(N)), data(20, seed=4)) >= 0.95
    store.set_index(IndexConfig())
    q = data(1, seed=6)[0]
    assert [int(v) for v in store.find(q, 5)[1]] == exact_top(keys, q, 5)


async def _load(client: Client, name: str, *options: str) -> None:
    result = await client.backend.LoadModel(pb.ModelOptions(Model=name, Options=list(options)))
    assert result.success, result.message


@pytest.mark.asyncio
async def test_hnsw_over_grpc_keeps_namespaces_apart() -> None:
    keys = data()
    async with serving(LocalStore()) as served:
        c = served.client
        await _load(c, "store://graph", "index:hnsw", "hnsw_m:12", "hnsw_ef_search:80")
        await c.backend.StoresSet(
            pb.StoresSetOptions(
                Keys=[pb.StoresKey(Floats=r) for r in keys.tolist()],
                Values=[pb.StoresValue(Bytes=str(i).encode()) for i in range(N)],
            )
        )
        await _load(c, "store://other")
        found = await c.backend.StoresFind(
            pb.StoresFindOptions(Key=pb.StoresKey(Floats=keys[0].tolist()), TopK=3)
        )
        assert list(found.Keys) == []
        await _load(c, "store://graph", "index:hnsw", "hnsw_m:12", "hnsw_ef_search:80")
        hits = 0
        for q in data(20, seed=8):
            found = await c.backend.StoresFind(
                pb.StoresFindOptions(Key=pb.StoresKey(Floats=q.tolist()), TopK=10)
            )
            assert list(found.Similarities) == sorted(found.Similarities, reverse=True)
            hits += len({int(v.Bytes) for v in found.Values} & set(exact_top(keys, q, 10)))
        assert hits / 200 >= 0.95
        bad = await c.backend.LoadModel(pb.ModelOptions(Model="store://x", Options=["index:ivf"]))
        assert not bad.success
        assert "option 'index'" in bad.message
