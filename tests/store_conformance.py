"""The Stores API's semantics, written once and run against every store backend over real gRPC.

A backend's tests/<name>/test_conformance.py subclasses `StoreConformance` as `Test...` and provides the
fixtures `served` (its backend served, no store loaded yet) and `store_options` (LoadModel options every
store gets). Each test loads fresh `store://` names, so a backend whose data outlives the test (an engine
shared by a module) starts each from nothing.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import numpy as np
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from localfleet.client import Client
from localfleet.proto import backend_pb2 as pb
from localfleet.testing import Served


def keys(*rows: Sequence[float]) -> list[pb.StoresKey]:
    return [pb.StoresKey(Floats=list(r)) for r in rows]


def values(*items: bytes) -> list[pb.StoresValue]:
    return [pb.StoresValue(Bytes=v) for v in items]


async def put(client: Client, rows: Sequence[Sequence[float]], vals: Sequence[bytes]) -> pb.Result:
    result: pb.Result = await client.backend.StoresSet(
        pb.StoresSetOptions(Keys=keys(*rows), Values=values(*vals))
    )
    return result


async def get(client: Client, *rows: Sequence[float]) -> dict[tuple[float, ...], bytes]:
    got = await client.backend.StoresGet(pb.StoresGetOptions(Keys=keys(*rows)))
    return {tuple(k.Floats): v.Bytes for k, v in zip(got.Keys, got.Values, strict=True)}


async def find(client: Client, query: Sequence[float], top_k: int) -> pb.StoresFindResult:
    found: pb.StoresFindResult = await client.backend.StoresFind(
        pb.StoresFindOptions(Key=pb.StoresKey(Floats=list(query)), TopK=top_k)
    )
    return found


async def load(client: Client, name: str, *options: str) -> pb.Result:
    result: pb.Result = await client.backend.LoadModel(pb.ModelOptions(Model=name, Options=list(options)))
    return result


async def error(call: object) -> GRPCError:
    with pytest.raises(GRPCError) as err:
        await call  # type: ignore[misc]
    return err.value


def fresh(label: str) -> str:
    return f"store://{label}-{uuid.uuid4().hex[:10]}"


class StoreConformance:
    """The behaviours LocalAI core relies on (shared/contract README, Stores*)."""

    @pytest.fixture
    async def store(self, served: Served, store_options: list[str]) -> Client:
        result = await load(served.client, fresh("conformance"), *store_options)
        assert result.success, result.message
        return served.client

    async def test_a_name_without_the_store_prefix_is_refused(self, served: Served) -> None:
        for name in ("llama-3-8b.gguf", "store://../etc"):
            result = await load(served.client, name)
            assert not result.success, name
        status = await served.client.backend.Status(pb.HealthMessage())
        assert status.state == pb.StatusResponse.UNINITIALIZED

    async def test_set_is_an_upsert_and_get_returns_found_keys_in_request_order(self, store: Client) -> None:
        assert (await put(store, [[1, 0, 0], [0, 1, 0]], [b"a", b"b"])).success
        assert (await put(store, [[1, 0, 0]], [b"A"])).success
        got = await store.backend.StoresGet(pb.StoresGetOptions(Keys=keys([0, 1, 0], [9, 9, 9], [1, 0, 0])))
        assert [list(k.Floats) for k in got.Keys] == [[0, 1, 0], [1, 0, 0]]
        assert [v.Bytes for v in got.Values] == [b"b", b"A"]

    async def test_a_key_twice_in_one_batch_keeps_the_last_value(self, store: Client) -> None:
        assert (await put(store, [[2, 2], [3, 3], [2, 2]], [b"first", b"other", b"last"])).success
        assert await get(store, [2, 2], [3, 3]) == {(2.0, 2.0): b"last", (3.0, 3.0): b"other"}

    async def test_keys_and_values_come_back_exactly(self, store: Client) -> None:
        rows = [[0.1, 1e-30, -3.5], [1e30, 0.3, 7.0]]
        blobs = [bytes(range(256)), b"\x00\xff\xfe not utf-8 \x80"]
        await put(store, rows, blobs)
        expected = {
            tuple(np.float32(x).item() for x in row): blob for row, blob in zip(rows, blobs, strict=True)
        }
        assert await get(store, *rows) == expected

    async def test_delete_removes_and_a_missing_key_is_no_error(self, store: Client) -> None:
        await put(store, [[1, 2, 3], [3, 2, 1]], [b"x", b"y"])
        result = await store.backend.StoresDelete(pb.StoresDeleteOptions(Keys=keys([1, 2, 3], [4, 5, 6])))
        assert result.success
        assert await get(store, [1, 2, 3], [3, 2, 1]) == {(3.0, 2.0, 1.0): b"y"}
        again = await store.backend.StoresDelete(pb.StoresDeleteOptions(Keys=keys([1, 2, 3])))
        assert again.success

    async def test_find_returns_the_top_k_by_cosine_descending(self, store: Client) -> None:
        rng = np.random.default_rng(7)
        data = rng.standard_normal((300, 16)).astype(np.float32)
        await put(store, data.tolist(), [str(i).encode() for i in range(300)])
        for _ in range(3):
            query = rng.standard_normal(16).astype(np.float32)
            found = await find(store, query.tolist(), 5)
            cosine = data @ query / (np.linalg.norm(data, axis=1) * np.linalg.norm(query))
            expected = np.argsort(-cosine)[:5]
            assert [int(v.Bytes) for v in found.Values] == expected.tolist()
            np.testing.assert_allclose(found.Similarities, cosine[expected], rtol=1e-5, atol=1e-6)
            assert list(found.Similarities) == sorted(found.Similarities, reverse=True)
            got = np.array([list(k.Floats) for k in found.Keys], np.float32)
            np.testing.assert_array_equal(got, data[expected])

    async def test_find_ranks_by_angle_not_by_length(self, store: Client) -> None:
        await put(store, [[100, 1], [1, 1], [0.5, 0]], [b"long, off", b"diagonal", b"short, aligned"])
        found = await find(store, [1, 0], 3)
        assert [v.Bytes for v in found.Values] == [b"short, aligned", b"long, off", b"diagonal"]
        assert found.Similarities[0] == pytest.approx(1.0)

    async def test_find_on_an_empty_store_returns_nothing(self, store: Client) -> None:
        found = await find(store, [1, 2], 3)
        assert list(found.Keys) == []
        assert list(found.Similarities) == []

    @pytest.mark.parametrize("top_k", [0, -1, -(2**31)])
    async def test_a_top_k_below_one_is_invalid(self, store: Client, top_k: int) -> None:
        await put(store, [[1, 2]], [b"x"])
        err = await error(find(store, [1, 2], top_k))
        assert err.status == Status.INVALID_ARGUMENT
        assert f"TopK must be at least 1, got {top_k}" in (err.message or "")

    async def test_a_top_k_beyond_the_store_returns_all_of_it_sorted(self, store: Client) -> None:
        await put(store, [[1, 0], [1, 1], [0, 1]], [b"x", b"xy", b"y"])
        found = await find(store, [1, 0], 2**31 - 1)
        assert [v.Bytes for v in found.Values] == [b"x", b"xy", b"y"]

    async def test_a_wrong_dimension_names_both_sizes_and_changes_nothing(self, store: Client) -> None:
        await put(store, [[1, 2, 3]], [b"x"])
        for call, given in (
            (put(store, [[1, 2]], [b"y"]), "2"),
            (find(store, [1, 2, 3, 4], 1), "4"),
            (store.backend.StoresGet(pb.StoresGetOptions(Keys=keys([1, 2, 3, 4, 5]))), "5"),
        ):
            err = await error(call)
            assert err.status == Status.INVALID_ARGUMENT
            assert f"dimension {given}" in (err.message or "")
            assert "dimension 3" in (err.message or "")
        assert await get(store, [1, 2, 3]) == {(1.0, 2.0, 3.0): b"x"}

    @pytest.mark.parametrize(
        "batch",
        [
            [[1, 0], [0, 1], [1, 1, 1]],  # mixed dimensions
            [[1, 0], [0, 1], [float("nan"), 1]],  # a NaN among good keys
        ],
    )
    async def test_a_rejected_batch_changes_nothing(self, store: Client, batch: list[list[float]]) -> None:
        await put(store, [[1, 0]], [b"old"])
        err = await error(put(store, batch, [b"new", b"b", b"c"]))
        assert err.status == Status.INVALID_ARGUMENT
        assert await get(store, [1, 0], [0, 1]) == {(1.0, 0.0): b"old"}

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
        self, store: Client, request_: pb.StoresSetOptions, expected: str
    ) -> None:
        err = await error(store.backend.StoresSet(request_))
        assert err.status == Status.INVALID_ARGUMENT
        assert expected in (err.message or "")
        for call in (
            store.backend.StoresGet(pb.StoresGetOptions()),
            store.backend.StoresDelete(pb.StoresDeleteOptions()),
        ):
            assert (await error(call)).status == Status.INVALID_ARGUMENT
        assert await store.healthy()

    async def test_an_emptied_store_takes_a_new_dimension(self, store: Client) -> None:
        await put(store, [[1, 2]], [b"two"])
        await store.backend.StoresDelete(pb.StoresDeleteOptions(Keys=keys([1, 2])))
        assert (await put(store, [[1, 2, 3]], [b"three"])).success
        assert await get(store, [1, 2, 3]) == {(1.0, 2.0, 3.0): b"three"}
        assert [v.Bytes for v in (await find(store, [1, 2, 3], 1)).Values] == [b"three"]

    async def test_namespaces_are_kept_apart_and_switching_back_finds_data(
        self, served: Served, store_options: list[str]
    ) -> None:
        c = served.client
        first, second = fresh("first"), fresh("second")
        assert (await load(c, first, *store_options)).success
        await put(c, [[1, 1]], [b"first"])
        assert (await load(c, second, *store_options)).success
        assert await get(c, [1, 1]) == {}
        assert list((await find(c, [1, 1], 1)).Keys) == []
        await put(c, [[1, 1]], [b"second"])
        assert (await load(c, first, *store_options)).success
        assert await get(c, [1, 1]) == {(1.0, 1.0): b"first"}

    async def test_concurrent_writers_lose_nothing(self, store: Client) -> None:
        async def writer(w: int) -> None:
            rows = [[float(w), float(i), 1.0] for i in range(20)]
            assert (await put(store, rows, [f"{w}-{i}".encode() for i in range(20)])).success

        await asyncio.gather(*(writer(w) for w in range(10)))
        found = await get(store, *[[float(w), float(i), 1.0] for w in range(10) for i in range(20)])
        assert len(found) == 200
        assert found[(7.0, 3.0, 1.0)] == b"7-3"
