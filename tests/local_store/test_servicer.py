"""local-store over real gRPC: the stores API semantics core relies on, namespaces, persistence."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from grpclib.const import Status

from localfleet.client import connect
from localfleet.proto import backend_pb2 as pb
from localfleet.testing import Served, serving, spawn
from localfleet_local_store.engine import VectorStore
from localfleet_local_store.servicer import LocalStore
from tests.store_conformance import error, get, keys, load, put, values

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def store() -> AsyncIterator[Served]:
    async with serving(LocalStore()) as served:
        result = await load(served.client, "store://test")
        assert result.success, result.message
        yield served


async def test_a_name_without_store_prefix_is_refused_at_once() -> None:
    async with serving(LocalStore()) as served:
        result = await load(served.client, "llama-3-8b.gguf")
        assert not result.success
        assert "store://" in result.message
        bad = await load(served.client, "store://../etc")
        assert not bad.success
        status = await served.client.backend.Status(pb.HealthMessage())
        assert status.state == pb.StatusResponse.UNINITIALIZED


async def test_set_is_an_upsert_and_get_returns_found_keys_only(store: Served) -> None:
    c = store.client
    assert (await put(c, [[1, 0, 0], [0, 1, 0]], [b"a", b"b"])).success
    assert (await put(c, [[1, 0, 0]], [b"A"])).success
    found = await get(c, [0, 1, 0], [9, 9, 9], [1, 0, 0])
    assert found == {(0.0, 1.0, 0.0): b"b", (1.0, 0.0, 0.0): b"A"}
    got = await c.backend.StoresGet(pb.StoresGetOptions(Keys=keys([0, 1, 0], [9, 9, 9], [1, 0, 0])))
    assert [list(k.Floats) for k in got.Keys] == [[0, 1, 0], [1, 0, 0]]  # request order, found only


async def test_delete_of_missing_keys_succeeds(store: Served) -> None:
    c = store.client
    await put(c, [[1, 2, 3]], [b"x"])
    result = await c.backend.StoresDelete(pb.StoresDeleteOptions(Keys=keys([1, 2, 3], [4, 5, 6])))
    assert result.success
    assert await get(c, [1, 2, 3]) == {}


async def test_find_returns_nearest_by_cosine_descending(store: Served) -> None:
    rng = np.random.default_rng(7)
    data = rng.standard_normal((200, 16)).astype(np.float32)
    await put(store.client, data.tolist(), [str(i).encode() for i in range(200)])
    query = rng.standard_normal(16).astype(np.float32)
    found = await store.client.backend.StoresFind(
        pb.StoresFindOptions(Key=pb.StoresKey(Floats=query), TopK=5)
    )
    cosine = data @ query / (np.linalg.norm(data, axis=1) * np.linalg.norm(query))
    expected = np.argsort(-cosine)[:5]
    assert [int(v.Bytes) for v in found.Values] == expected.tolist()
    np.testing.assert_allclose(found.Similarities, cosine[expected], rtol=1e-5, atol=1e-6)
    assert list(found.Similarities) == sorted(found.Similarities, reverse=True)
    np.testing.assert_array_equal(np.array([list(k.Floats) for k in found.Keys], np.float32), data[expected])


async def test_find_on_an_empty_store_returns_nothing(store: Served) -> None:
    found = await store.client.backend.StoresFind(
        pb.StoresFindOptions(Key=pb.StoresKey(Floats=[1, 2]), TopK=3)
    )
    assert list(found.Keys) == []
    assert list(found.Similarities) == []


@pytest.mark.parametrize("top_k", [0, -1, -(2**31)])
async def test_top_k_below_one_is_invalid(store: Served, top_k: int) -> None:
    await put(store.client, [[1, 2]], [b"x"])
    err = await error(
        store.client.backend.StoresFind(pb.StoresFindOptions(Key=pb.StoresKey(Floats=[1, 2]), TopK=top_k))
    )
    assert err.status == Status.INVALID_ARGUMENT
    assert f"TopK must be at least 1, got {top_k}" in (err.message or "")


async def test_a_huge_top_k_returns_the_whole_store_sorted(store: Served) -> None:
    await put(store.client, [[1, 0], [1, 1], [0, 1]], [b"x", b"xy", b"y"])
    found = await store.client.backend.StoresFind(
        pb.StoresFindOptions(Key=pb.StoresKey(Floats=[1, 0]), TopK=2**31 - 1)
    )
    assert [v.Bytes for v in found.Values] == [b"x", b"xy", b"y"]
    assert list(found.Similarities) == sorted(found.Similarities, reverse=True)


async def test_wrong_dimension_names_both_and_changes_nothing(store: Served) -> None:
    c = store.client
    await put(c, [[1, 2, 3]], [b"x"])
    err = await error(put(c, [[1, 2]], [b"y"]))
    assert err.status == Status.INVALID_ARGUMENT
    assert "2" in (err.message or "")
    assert "3" in (err.message or "")
    err = await error(
        c.backend.StoresFind(pb.StoresFindOptions(Key=pb.StoresKey(Floats=[1, 2, 3, 4]), TopK=1))
    )
    assert err.status == Status.INVALID_ARGUMENT
    assert "4" in (err.message or "")
    assert "3" in (err.message or "")
    assert await get(c, [1, 2, 3]) == {(1.0, 2.0, 3.0): b"x"}


async def test_a_rejected_batch_changes_nothing(store: Served) -> None:
    c = store.client
    await put(c, [[1, 0]], [b"old"])
    err = await error(put(c, [[1, 0], [0, 1], [1, 1, 1]], [b"new", b"b", b"c"]))
    assert err.status == Status.INVALID_ARGUMENT
    assert await get(c, [1, 0], [0, 1]) == {(1.0, 0.0): b"old"}


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (pb.StoresSetOptions(), "needs at least one key"),
        (pb.StoresSetOptions(Keys=keys([1, 2]), Values=[]), "1 keys but 0 values"),
        (pb.StoresSetOptions(Keys=keys([1, 2], [3, 4]), Values=values(b"a")), "2 keys but 1 values"),
        (pb.StoresSetOptions(Keys=keys([]), Values=values(b"a")), "has no floats"),
    ],
)
async def test_malformed_sets_are_invalid_argument(
    store: Served, request_: pb.StoresSetOptions, expected: str
) -> None:
    err = await error(store.client.backend.StoresSet(request_))
    assert err.status == Status.INVALID_ARGUMENT
    assert expected in (err.message or "")
    assert await store.client.healthy()


async def test_empty_key_lists_are_invalid_argument(store: Served) -> None:
    for call in (
        store.client.backend.StoresGet(pb.StoresGetOptions()),
        store.client.backend.StoresDelete(pb.StoresDeleteOptions()),
    ):
        err = await error(call)
        assert err.status == Status.INVALID_ARGUMENT


async def test_concurrent_writers_lose_nothing(store: Served) -> None:
    async def writer(w: int) -> None:
        rows = [[float(w), float(i), 1.0] for i in range(50)]
        result = await put(store.client, rows, [f"{w}-{i}".encode() for i in range(50)])
        assert result.success

    await asyncio.gather(*(writer(w) for w in range(20)))
    everything = [[float(w), float(i), 1.0] for w in range(20) for i in range(50)]
    found = await get(store.client, *everything)
    assert len(found) == 1000
    assert found[(7.0, 3.0, 1.0)] == b"7-3"


async def test_namespaces_are_kept_apart_and_switching_back_finds_data() -> None:
    async with serving(LocalStore()) as served:
        c = served.client
        assert (await load(c, "store://first")).success
        await put(c, [[1, 1]], [b"first"])
        assert (await load(c, "store://second")).success
        assert await get(c, [1, 1]) == {}
        await put(c, [[1, 1]], [b"second"])
        assert (await load(c, "store://first")).success
        assert await get(c, [1, 1]) == {(1.0, 1.0): b"first"}


async def test_free_never_drops_acknowledged_data_in_memory() -> None:
    async with serving(LocalStore()) as served:
        c = served.client
        await load(c, "store://keep")
        await put(c, [[3, 4]], [b"kept"])
        freed = await c.backend.Free(pb.HealthMessage())
        assert freed.success
        assert "kept in memory" in freed.message
        err = await error(get(c, [3, 4]))
        assert err.status == Status.FAILED_PRECONDITION
        await load(c, "store://keep")
        assert await get(c, [3, 4]) == {(3.0, 4.0): b"kept"}


def _roots(monkeypatch: pytest.MonkeyPatch, *folders: Path) -> None:
    monkeypatch.setenv("LOCALFLEET_PATH_ROOTS", json.dumps([str(f) for f in folders]))


async def test_free_of_a_persistent_store_flushes_and_reload_finds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _roots(monkeypatch, tmp_path)
    async with serving(LocalStore()) as served:
        c = served.client
        assert (await load(c, "store://disk", f"store_dir:{tmp_path}")).success
        await put(c, [[5, 6]], [b"on disk"])
        freed = await c.backend.Free(pb.HealthMessage())
        assert "flushed to disk" in freed.message
        assert (await load(c, "store://disk", f"store_dir:{tmp_path}")).success
        assert await get(c, [5, 6]) == {(5.0, 6.0): b"on disk"}


async def test_store_dir_must_lie_in_a_folder_the_operator_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    async with serving(LocalStore()) as served:  # nothing allowed: the option is off
        result = await load(served.client, "store://x", f"store_dir:{elsewhere}")
        assert not result.success
        assert "store_dir option is off until" in result.message
    _roots(monkeypatch, tmp_path / "allowed")
    async with serving(LocalStore()) as served:
        for outside in (str(elsewhere), str(tmp_path / "allowed" / ".." / "elsewhere"), "relative/dir"):
            result = await load(served.client, "store://x", f"store_dir:{outside}")
            assert not result.success, outside
            assert "is not an absolute path inside" in result.message
        assert (await load(served.client, "store://x", f"store_dir:{tmp_path / 'allowed'}")).success
    assert not elsewhere.exists()
    assert (tmp_path / "allowed" / "x").is_dir()


async def test_a_bad_store_option_fails_load_naming_it(tmp_path: Path) -> None:
    async with serving(LocalStore()) as served:
        result = await load(served.client, "store://x", "sync:sometimes")
        assert not result.success
        assert "option 'sync'" in result.message


async def test_status_counts_store_memory(store: Served) -> None:
    await put(store.client, [[1.0] * 64] * 1, [b"v" * 1000])
    status = await store.client.backend.Status(pb.HealthMessage())
    assert status.state == pb.StatusResponse.READY
    assert status.memory.breakdown["stores"] >= 64 * 4 + 1000


async def test_sigterm_then_restart_keeps_every_acknowledged_key(tmp_path: Path) -> None:
    env = {"LOCALFLEET_STORE_DIR": str(tmp_path)}
    rows = np.random.default_rng(1).standard_normal((500, 8)).astype(np.float32).tolist()
    with spawn("local-store", env=env) as proc:
        async with connect(proc.addr) as c:
            assert (await load(c, "store://docs")).success
            for start in range(0, 500, 100):
                chunk = rows[start : start + 100]
                await put(c, chunk, [str(start + i).encode() for i in range(len(chunk))])
        proc.popen.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.popen.wait, 30) == 0
    with spawn("local-store", env=env) as proc:
        async with connect(proc.addr) as c:
            assert (await load(c, "store://docs")).success
            found = await get(c, *rows)
    assert len(found) == 500
    assert found[tuple(np.float32(x).item() for x in rows[123])] == b"123"


async def test_a_crash_loses_nothing_acknowledged_with_sync_always(tmp_path: Path) -> None:
    env = {"LOCALFLEET_STORE_DIR": str(tmp_path), "LOCALFLEET_STORE_SYNC": "always"}
    with spawn("local-store", env=env) as proc:
        async with connect(proc.addr) as c:
            assert (await load(c, "store://crash")).success
            for i in range(50):
                assert (await put(c, [[float(i), 1.0]], [f"v{i}".encode()])).success
        proc.popen.kill()  # no drain, no flush: only the journal survives
        proc.popen.wait()
    with spawn("local-store", env=env) as proc:
        async with connect(proc.addr) as c:
            assert (await load(c, "store://crash")).success
            found = await get(c, *[[float(i), 1.0] for i in range(50)])
    assert len(found) == 50
    assert found[(49.0, 1.0)] == b"v49"


def _damaged_store(folder: Path, damage: str) -> Path:
    """A store folder whose snapshot or journal (before its last record) has one flipped byte."""
    store = VectorStore.open(folder)
    store.set(np.array([[1, 0]], np.float32), [b"snap"])
    store.flush()
    for i in range(3):
        store.set(np.array([[1, i + 1]], np.float32), [f"r{i}".encode()])
    assert store._persist is not None
    store._persist.close()  # a crash: the journal keeps its three records
    path = folder / ("store.snap" if damage == "snapshot" else "store.journal")
    data = bytearray(path.read_bytes())
    data[16 + 12 + 20 if damage == "journal" else 60] ^= 0xFF  # record 1's body / inside the keys
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("damage", ["journal", "snapshot"])
async def test_a_damaged_store_fails_load_keeps_its_files_and_others_keep_serving(
    tmp_path: Path, damage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _roots(monkeypatch, tmp_path)
    path = _damaged_store(tmp_path / "bad", damage)
    files = {f: f.read_bytes() for f in (tmp_path / "bad").iterdir()}
    async with serving(LocalStore()) as served:
        c = served.client
        assert (await load(c, "store://good", f"store_dir:{tmp_path}")).success
        await put(c, [[7, 7]], [b"good"])
        for _ in range(2):  # a second try finds the same damage: nothing was repaired away
            result = await load(c, "store://bad", f"store_dir:{tmp_path}")
            assert not result.success
            assert str(path) in result.message
            assert "left untouched" in result.message
            assert ("record 1" if damage == "journal" else "corrupt") in result.message
        assert {f: f.read_bytes() for f in (tmp_path / "bad").iterdir()} == files
        assert (await load(c, "store://good", f"store_dir:{tmp_path}")).success
        assert await get(c, [7, 7]) == {(7.0, 7.0): b"good"}
