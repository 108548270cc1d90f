"""LoadModel, Status, Free and Health: the control RPCs every backend gets from the runtime."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from localfleet.proto import backend_pb2 as pb
from localfleet.testing import Served, serving
from tests.runtime.conftest import load
from tests.runtime.workbench import Workbench

pytestmark = pytest.mark.asyncio


async def test_health_answers_ok_before_any_model(served: Served) -> None:
    reply = await served.client.backend.Health(pb.HealthMessage())
    assert reply.message == b"OK"


async def test_health_answers_while_a_model_loads(served: Served, workbench: Workbench) -> None:
    workbench.release_load.clear()
    loading = asyncio.create_task(load(served))
    await asyncio.to_thread(workbench.load_started.wait, 5)
    reply = await served.client.backend.Health(pb.HealthMessage(), timeout=2)
    assert reply.message == b"OK"
    status = await served.client.backend.Status(pb.HealthMessage(), timeout=2)
    assert status.state == pb.StatusResponse.BUSY  # loading shows as BUSY: the contract has no LOADING
    assert not loading.done()
    workbench.release_load.set()
    assert (await loading).success


async def test_health_answers_while_a_request_runs(loaded: Served, workbench: Workbench) -> None:
    predict = asyncio.create_task(loaded.client.backend.Predict(pb.PredictOptions(Prompt="p", Tokens=300)))
    await asyncio.to_thread(workbench.started.wait, 5)
    reply = await loaded.client.backend.Health(pb.HealthMessage(), timeout=2)
    assert reply.message == b"OK"
    assert not predict.done()
    status = await loaded.client.backend.Status(pb.HealthMessage())
    assert status.state == pb.StatusResponse.BUSY
    predict.cancel()


async def test_model_file_is_used_when_it_exists(
    served: Served, workbench: Workbench, tmp_path: Path
) -> None:
    weights = tmp_path / "model.bin"
    weights.write_bytes(b"w")
    result = await load(served, "model.bin", ModelFile=str(weights), ModelPath=str(tmp_path))
    assert result.success, result.message
    assert workbench.loaded == str(weights)


async def test_model_is_used_when_model_file_is_missing(
    served: Served, workbench: Workbench, tmp_path: Path
) -> None:
    result = await load(served, "org/hub-model", ModelFile=str(tmp_path / "org/hub-model"))
    assert result.success, result.message
    assert workbench.loaded == "org/hub-model"


async def test_options_are_typed(served: Served, workbench: Workbench) -> None:
    result = await load(served, Options=["vocab:32", "load_seconds:0"])
    assert result.success, result.message
    assert workbench.options.vocab == 32


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ("vocab:many", "option 'vocab'='many': expected an integer"),
        ("fail:perhaps", "option 'fail'='perhaps': expected true or false"),
        ("colour:blue", "unknown option 'colour'"),
        ("novalue", "is not key:value"),
    ],
)
async def test_a_wrong_option_fails_load_naming_key_and_type(
    served: Served, option: str, expected: str
) -> None:
    result = await load(served, Options=[option])
    assert not result.success
    assert expected in result.message


async def test_option_value_is_split_at_the_first_colon() -> None:
    from localfleet.options import split_options

    assert split_options(["url:http://host:8080/x"]) == {"url": "http://host:8080/x"}


async def test_a_model_it_cannot_serve_is_refused_at_once(served: Served, workbench: Workbench) -> None:
    result = await load(served, "other/llm.gguf")
    assert not result.success
    assert "workbench cannot serve 'other/llm.gguf'" in result.message
    assert workbench.loaded is None


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"Model": "i" * 300}, "Model 'iii"),
        ({"Model": "org/" + "n" * 4100}, "is too long for this file system"),
        (
            {"Model": "bench-model", "ModelFile": "/models/a\0b.gguf"},
            "ModelFile '/models/a\\x00b.gguf' contains a null byte",
        ),
    ],
)
async def test_a_name_no_file_system_holds_is_refused_before_the_backend_looks(
    served: Served, workbench: Workbench, fields: dict[str, str], reason: str
) -> None:
    # Backends stat model names; the OS's refusal of such a name used to surface as INTERNAL.
    result = await served.client.backend.LoadModel(
        pb.ModelOptions(Model=fields["Model"], ModelFile=fields.get("ModelFile", ""))
    )
    assert not result.success
    assert reason in result.message
    assert "too long" in result.message or "null byte" in result.message
    assert len(result.message) < 600  # the name is quoted as a short prefix
    assert workbench.loaded is None
    assert (await load(served)).success  # and the backend serves on


async def test_a_failed_load_is_reported_and_status_is_error(served: Served) -> None:
    result = await load(served, Options=["fail:true"])
    assert not result.success
    assert "the workbench was told to fail" in result.message
    status = await served.client.backend.Status(pb.HealthMessage())
    assert status.state == pb.StatusResponse.ERROR
    with pytest.raises(GRPCError) as err:
        await served.client.backend.Predict(pb.PredictOptions(Prompt="x"))
    assert err.value.status == Status.FAILED_PRECONDITION
    assert "last LoadModel failed" in (err.value.message or "")


async def test_a_later_load_replaces_the_model(loaded: Served, workbench: Workbench) -> None:
    result = await load(loaded, "second-model")
    assert result.success
    assert workbench.loaded == "second-model"
    assert workbench.unloads == 1
    with pytest.raises(GRPCError) as err:
        await loaded.client.backend.Predict(pb.PredictOptions(Prompt="x", ModelIdentity="bench-model"))
    assert err.value.status == Status.NOT_FOUND


async def test_a_failed_replacement_loads_the_old_model_again(loaded: Served, workbench: Workbench) -> None:
    result = await load(loaded, "broken-model", Options=["fail:true"])
    assert not result.success
    assert "the workbench was told to fail" in result.message
    assert "'bench-model', loaded before, was loaded again and serves on" in result.message
    assert workbench.loaded == "bench-model"
    reply = await loaded.client.backend.Predict(pb.PredictOptions(Prompt="still", Tokens=1))
    assert reply.message == b"still:1"
    status = await loaded.client.backend.Status(pb.HealthMessage())
    assert status.state == pb.StatusResponse.READY


class BesideBench(Workbench):
    loads_beside = True  # its load() keeps the old model until the new one is in place


async def test_a_failed_load_beside_the_serving_model_leaves_it_serving_untouched(tmp_path: Path) -> None:
    first, second = tmp_path / "first.bin", tmp_path / "second.bin"
    first.write_bytes(b"w" * 1024)
    second.write_bytes(b"w" * 2048)
    bench = BesideBench()
    async with serving(bench) as served:
        assert (await load(served, str(first))).success
        result = await load(served, str(second), Options=["fail:true"])
        assert not result.success
        assert "the workbench was told to fail" in result.message
        assert result.message.endswith("serves on (the load was tried beside it)")
        assert bench.unloads == 0  # never released, never loaded again
        assert bench.loaded == str(first)
        status = await served.client.backend.Status(pb.HealthMessage())
        assert status.state == pb.StatusResponse.READY
        reply = await served.client.backend.Predict(pb.PredictOptions(Prompt="still", Tokens=1))
        assert reply.message == b"still:1"


async def test_a_model_without_room_beside_is_loaded_after_a_release_and_the_load_says_why(
    tmp_path: Path,
) -> None:
    first = tmp_path / "first.bin"
    first.write_bytes(b"w")
    bench = BesideBench()
    async with serving(bench) as served:
        assert (await load(served, str(first))).success
        result = await load(served, "org/hub-model")  # no size here: not loaded beside
        assert result.success, result.message
        assert "was released first: the size of 'org/hub-model' is not known here" in result.message
        assert bench.unloads == 1


async def test_calls_during_a_load_hear_the_model_is_loading(served: Served, workbench: Workbench) -> None:
    workbench.release_load.clear()
    loading = asyncio.create_task(load(served, "slow-model"))
    await asyncio.to_thread(workbench.load_started.wait, 5)
    with pytest.raises(GRPCError) as err:
        await served.client.backend.Predict(pb.PredictOptions(Prompt="x"), timeout=5)
    assert err.value.status == Status.UNAVAILABLE
    assert "model 'slow-model' is loading" in (err.value.message or "")
    assert "call LoadModel" not in (err.value.message or "")
    workbench.release_load.set()
    assert (await loading).success


async def test_with_path_roots_a_model_path_outside_them_is_refused(tmp_path: Path) -> None:
    allowed, models, outside = tmp_path / "shared", tmp_path / "models", tmp_path / "private"
    for folder in (allowed, models, outside):
        folder.mkdir()
        (folder / "m.bin").write_bytes(b"weights")
    settings = {"path_roots": [str(allowed)], "model_path": str(models)}
    async with serving(Workbench(), **settings) as served:
        refused = await load(served, str(outside / "m.bin"))
        assert not refused.success
        assert "is outside the folders this backend may read" in refused.message
        for ok in (str(allowed / "m.bin"), str(models / "m.bin"), "org/hub-model"):
            assert (await load(served, ok)).success, ok


async def test_status_reports_state_and_memory(served: Served) -> None:
    status = await served.client.backend.Status(pb.HealthMessage())
    assert status.state == pb.StatusResponse.UNINITIALIZED
    assert status.memory.breakdown["rss"] > 10 * 2**20
    await load(served)
    status = await served.client.backend.Status(pb.HealthMessage())
    assert status.state == pb.StatusResponse.READY
    assert status.memory.breakdown["workbench"] == 1234
    assert status.memory.total >= status.memory.breakdown["rss"]


async def test_free_unloads_and_returns_to_uninitialized(loaded: Served, workbench: Workbench) -> None:
    result = await loaded.client.backend.Free(pb.HealthMessage())
    assert result.success
    assert workbench.loaded is None
    status = await loaded.client.backend.Status(pb.HealthMessage())
    assert status.state == pb.StatusResponse.UNINITIALIZED
    with pytest.raises(GRPCError) as err:
        await loaded.client.backend.Predict(pb.PredictOptions(Prompt="x"))
    assert err.value.status == Status.FAILED_PRECONDITION


async def test_free_waits_for_requests_in_flight(loaded: Served, workbench: Workbench) -> None:
    predict = asyncio.create_task(loaded.client.backend.Predict(pb.PredictOptions(Prompt="p", Tokens=30)))
    await asyncio.to_thread(workbench.started.wait, 5)
    result = await loaded.client.backend.Free(pb.HealthMessage())
    assert result.success
    reply = await predict  # the request finished on the model it started with
    assert reply.message == b"p:30"


async def test_start_up_model_gates_readiness() -> None:
    workbench = Workbench()
    workbench.release_load.clear()
    async with serving(workbench, model="boot-model") as served:
        assert not await served.client.ready()
        assert (await served.client.backend.Health(pb.HealthMessage())).message == b"OK"
        workbench.release_load.set()
        for _ in range(500):
            if await served.client.ready():
                break
            await asyncio.sleep(0.01)
        assert await served.client.ready()
        assert workbench.loaded == "boot-model"


async def test_readiness_is_serving_without_start_up_model(served: Served) -> None:
    assert await served.client.ready()


async def test_a_loaded_model_is_out_of_the_collectors_way_until_freed(
    loaded: Served, workbench: Workbench
) -> None:
    import gc

    # A full collection (the heap trim after every large request) would walk an engine's hundreds of
    # thousands of objects holding the GIL: what is alive after a load is frozen, and Free thaws it.
    assert gc.get_freeze_count() > 0
    result = await loaded.client.backend.Free(pb.HealthMessage())
    assert result.success
    assert gc.get_freeze_count() == 0
    result = await loaded.client.backend.LoadModel(pb.ModelOptions(Model="again"))
    assert result.success, result.message
    assert gc.get_freeze_count() > 0
