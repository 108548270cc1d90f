"""milvus-store over real gRPC beyond the shared conformance: the engine's faults, options, credentials,
collections and the embedded engine's data across restarts. Every engine here is a real Milvus Lite."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from grpc import StatusCode  # type: ignore[import-untyped]
from grpclib.const import Status
from pymilvus import MilvusClient, MilvusException  # type: ignore[import-untyped]

from localfleet.client import connect
from localfleet.errors import EngineFailure, TimedOut, Unauthenticated, Unavailable
from localfleet.proto import backend_pb2 as pb
from localfleet.testing import Served, free_port, serving, spawn
from localfleet_milvus_store.engine import failure
from localfleet_milvus_store.servicer import MilvusStore, collection_name
from tests.import_probe import imported_before_load
from tests.milvus_store.conftest import Engine
from tests.store_conformance import error, find, fresh, get, load, put

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    async with serving(MilvusStore()) as served:
        yield served


async def state(served: Served) -> int:
    status = await served.client.backend.Status(pb.HealthMessage())
    return int(status.state)


@pytest.mark.asyncio
async def test_an_engine_down_at_load_fails_the_load_naming_its_address(served: Served) -> None:
    address = f"http://127.0.0.1:{free_port()}"
    result = await load(served.client, fresh("down"), f"uri:{address}", "timeout:3")
    assert not result.success
    assert address in result.message
    assert "unreachable" in result.message


@pytest.mark.asyncio
async def test_an_engine_down_mid_call_is_unavailable_and_serves_again_once_back(
    served: Served, own_engine: Engine
) -> None:
    c = served.client
    assert (await load(c, fresh("faults"), f"uri:{own_engine.uri}", "timeout:3")).success
    await put(c, [[1, 0], [0, 1]], [b"east", b"north"])

    own_engine.stop()
    for call in (get(c, [1, 0]), put(c, [[1, 1]], [b"lost?"]), find(c, [1, 0], 1)):
        err = await error(call)
        assert err.status == Status.UNAVAILABLE
        assert own_engine.uri in (err.message or "")
    assert await state(served) == pb.StatusResponse.ERROR

    own_engine.start()  # the same data folder and port: the engine comes back, the backend never restarted
    assert await get(c, [1, 0], [0, 1]) == {(1.0, 0.0): b"east", (0.0, 1.0): b"north"}
    assert await state(served) == pb.StatusResponse.READY
    assert (await put(c, [[1, 1]], [b"after"])).success
    assert [v.Bytes for v in (await find(c, [1, 1], 1)).Values] == [b"after"]


@pytest.mark.asyncio
async def test_credentials_come_from_the_environment_and_are_never_shown(
    served: Served, engine: Engine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MY_MILVUS_TOKEN", "root:s3cret-in-env")
    caplog.set_level(logging.DEBUG)
    down = f"http://alice:hunter2@127.0.0.1:{free_port()}"
    failed = await load(served.client, fresh("auth"), f"uri:{down}", "token_env:MY_MILVUS_TOKEN", "timeout:3")
    assert not failed.success
    assert down.replace("alice:hunter2@", "") in failed.message  # named, without its password
    # Milvus Lite takes any token: the load succeeds, and says nothing of it either.
    ok = await load(served.client, fresh("auth"), f"uri:{engine.uri}", "token_env:MY_MILVUS_TOKEN")
    assert ok.success, ok.message
    shown = failed.message + ok.message + caplog.text
    assert "s3cret" not in shown
    assert "hunter2" not in shown


@pytest.mark.asyncio
async def test_each_store_is_a_collection_named_after_it(served: Served, engine: Engine) -> None:
    c = served.client
    assert (await load(c, "store://docs.v2-en", f"uri:{engine.uri}")).success
    await put(c, [[1, 2]], [b"x"])
    assert (await load(c, "store://other", f"uri:{engine.uri}", "collection:team_docs")).success
    await put(c, [[3, 4]], [b"y"])
    client = MilvusClient(uri=engine.uri)
    try:
        names = set(client.list_collections())
        assert {"localfleet_docs_dv2_hen", "team_docs"} <= names
        assert client.get_collection_stats("team_docs")["row_count"] == 1
    finally:
        client.close()


def test_collection_names_are_distinct_for_distinct_stores() -> None:
    names = ["a.b", "a_db", "a-b", "a_hb", "a__b", "a_b", "ab"]
    assert len({collection_name(n, "p_") for n in names}) == len(names)


@pytest.mark.asyncio
async def test_an_hnsw_index_with_its_parameters_serves_find(served: Served, engine: Engine) -> None:
    c = served.client
    options = [f"uri:{engine.uri}", "index:HNSW", "hnsw_m:8", "ef_construction:64", "ef:32"]
    assert (await load(c, "store://hnsw-check", *options)).success
    rng = np.random.default_rng(3)
    data = rng.standard_normal((200, 8)).astype(np.float32)
    await put(c, data.tolist(), [str(i).encode() for i in range(200)])
    found = await find(c, data[17].tolist(), 3)
    assert found.Values[0].Bytes == b"17"
    assert found.Similarities[0] == pytest.approx(1.0, abs=1e-5)
    client = MilvusClient(uri=engine.uri)
    try:
        index = client.describe_index("localfleet_hnsw_hcheck", "key")
        assert index["index_type"] == "HNSW"
    finally:
        client.close()


@pytest.mark.asyncio
async def test_the_inner_product_metric_ranks_normalised_keys_as_cosine(
    served: Served, engine: Engine
) -> None:
    c = served.client
    assert (
        await load(c, "store://ip-check", f"uri:{engine.uri}", "metric:IP", "consistency:Bounded")
    ).success
    rng = np.random.default_rng(4)
    data = rng.standard_normal((100, 8)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    await put(c, data.tolist(), [str(i).encode() for i in range(100)])
    query = data[5] + 0.1 * data[6]
    found = await find(c, query.tolist(), 4)
    expected = np.argsort(-(data @ query))[:4]
    assert [int(v.Bytes) for v in found.Values] == expected.tolist()
    client = MilvusClient(uri=engine.uri)
    try:
        assert client.describe_index("localfleet_ip_hcheck", "key")["metric_type"] == "IP"
    finally:
        client.close()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("option", "named"),
    [
        ("index:ANNOY", "option 'index'"),
        ("consistency:Always", "option 'consistency'"),
        ("color:red", "color"),
    ],
)
async def test_a_bad_option_fails_the_load_naming_it(served: Served, option: str, named: str) -> None:
    result = await load(served.client, fresh("bad"), option)
    assert not result.success
    assert named in result.message


@pytest.mark.asyncio
async def test_a_value_too_large_for_milvus_is_refused_naming_the_limit(
    served: Served, engine: Engine
) -> None:
    c = served.client
    assert (await load(c, fresh("big"), f"uri:{engine.uri}")).success
    err = await error(put(c, [[1, 0], [0, 1]], [b"ok", b"x" * 60000]))
    assert err.status == Status.INVALID_ARGUMENT
    assert "49149 bytes" in (err.message or "")
    assert await get(c, [1, 0]) == {}  # the batch was refused whole


@pytest.mark.asyncio
async def test_the_embedded_engine_keeps_its_data_across_backend_restarts(tmp_path: Path) -> None:
    env = {"LOCALFLEET_MILVUS_DIR": str(tmp_path)}
    rows = np.random.default_rng(1).standard_normal((50, 8)).astype(np.float32).tolist()
    with spawn("milvus-store", env=env, timeout=60) as proc:
        async with connect(proc.addr) as c:
            assert (await load(c, "store://kept")).success
            await put(c, rows, [str(i).encode() for i in range(50)])
        proc.popen.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.popen.wait, 30) == 0
    with spawn("milvus-store", env=env, timeout=60) as proc:
        async with connect(proc.addr) as c:
            loaded = await load(c, "store://kept")
            assert loaded.success
            assert "dimension 8" in loaded.message
            found = await get(c, *rows)
    assert len(found) == 50
    assert found[tuple(np.float32(x).item() for x in rows[17])] == b"17"


def test_pymilvus_is_imported_only_with_the_first_store() -> None:
    assert imported_before_load("milvus-store", ("pymilvus", "milvus_lite", "numpy", "grpc")) == "none"


@pytest.mark.asyncio
async def test_two_backends_on_one_engine_share_a_store(engine: Engine) -> None:
    """Replicas of the backend behind one engine: a store one makes, the other sees and writes to."""
    name, options = fresh("shared"), [f"uri:{engine.uri}"]
    async with serving(MilvusStore()) as first, serving(MilvusStore()) as second:
        assert (await load(first.client, name, *options)).success
        assert (await load(second.client, name, *options)).success  # empty yet: no dimension
        await put(first.client, [[1, 2, 3]], [b"from the first"])
        assert (await put(second.client, [[3, 2, 1]], [b"from the second"])).success
        err = await error(put(second.client, [[1, 2]], [b"wrong"]))
        assert "dimension 2" in (err.message or "")
        assert "dimension 3" in (err.message or "")
        found = await get(first.client, [1, 2, 3], [3, 2, 1])
    assert found == {(1.0, 2.0, 3.0): b"from the first", (3.0, 2.0, 1.0): b"from the second"}


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (MilvusException(code=2, message="Fail connecting to server on 10.0.0.9:19530"), Unavailable),
        (MilvusException(code=StatusCode.UNAVAILABLE, message="[search] Retry timeout: 10s"), Unavailable),
        (MilvusException(code=StatusCode.DEADLINE_EXCEEDED, message="deadline exceeded"), TimedOut),
        (MilvusException(code=1800, message="auth check failure, please check username"), Unauthenticated),
        (MilvusException(code=65535, message="collection schema mismatch"), EngineFailure),
    ],
)
def test_pymilvus_failures_map_to_statuses_naming_the_engine(raised: Exception, expected: type) -> None:
    """pymilvus's own exceptions, as a cluster raises them (Milvus Lite has no authentication)."""
    error = failure(raised, "http://milvus:19530")
    assert type(error) is expected
    assert "http://milvus:19530" in str(error)
