"""What every request goes through: errors, admission, cancellation, identity, auth, size cap, metrics."""

from __future__ import annotations

import asyncio
import urllib.request

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from localfleet.client import connect
from localfleet.proto import backend_pb2 as pb
from localfleet.testing import Served, free_port, serving
from tests.runtime.conftest import load
from tests.runtime.workbench import Workbench

pytestmark = pytest.mark.asyncio


async def _status_of(call: object) -> GRPCError:
    with pytest.raises(GRPCError) as err:
        await call  # type: ignore[misc]
    return err.value


async def test_request_before_load_is_failed_precondition(served: Served) -> None:
    err = await _status_of(served.client.backend.Predict(pb.PredictOptions(Prompt="x")))
    assert err.status == Status.FAILED_PRECONDITION
    assert err.message == "no model loaded; call LoadModel first"


async def test_bad_input_is_invalid_argument_and_the_process_keeps_serving(loaded: Served) -> None:
    err = await _status_of(loaded.client.backend.Predict(pb.PredictOptions(Prompt="x", Tokens=-1)))
    assert err.status == Status.INVALID_ARGUMENT
    assert "Tokens must be >= 0, got -1" in (err.message or "")
    reply = await loaded.client.backend.Predict(pb.PredictOptions(Prompt="x", Tokens=1))
    assert reply.message == b"x:1"


async def test_engine_failure_is_internal_with_its_message(loaded: Served) -> None:
    err = await _status_of(loaded.client.backend.Predict(pb.PredictOptions(Prompt="crash")))
    assert err.status == Status.INTERNAL
    assert "RuntimeError: engine blew up" in (err.message or "")
    assert (await loaded.client.backend.Predict(pb.PredictOptions(Prompt="ok"))).message == b"ok:0"


async def test_rpc_a_backend_lacks_is_unimplemented_naming_it(loaded: Served) -> None:
    err = await _status_of(loaded.client.backend.TTS(pb.TTSRequest(text="hi")))
    assert err.status == Status.UNIMPLEMENTED
    assert "workbench does not implement TTS" in (err.message or "")
    assert "Predict" in (err.message or "")


async def test_every_contract_rpc_answers(served: Served) -> None:
    from localfleet.service import SERVICE

    mapping = served.server.server._mapping
    for method in SERVICE.methods:
        assert f"/backend.Backend/{method.name}" in mapping


async def test_queue_full_gets_resource_exhausted() -> None:
    workbench = Workbench()
    async with serving(workbench, concurrency=1, queue_size=1) as served:
        await load(served)
        stub = served.client.backend
        running = asyncio.create_task(stub.Predict(pb.PredictOptions(Prompt="a", Tokens=50)))
        await asyncio.to_thread(workbench.started.wait, 5)
        queued = asyncio.create_task(stub.Predict(pb.PredictOptions(Prompt="b", Tokens=1)))
        while served.runtime.admission.waiting < 1:
            await asyncio.sleep(0.005)
        err = await _status_of(stub.Predict(pb.PredictOptions(Prompt="c", Tokens=1)))
        assert err.status == Status.RESOURCE_EXHAUSTED
        assert "queue full: 1 requests running and 1 waiting" in (err.message or "")
        assert (await running).message == b"a:50"
        assert (await queued).message == b"b:1"


async def test_queued_requests_are_served_in_order() -> None:
    workbench = Workbench()
    async with serving(workbench, concurrency=1, queue_size=8) as served:
        await load(served)
        stub = served.client.backend
        first = asyncio.create_task(stub.Predict(pb.PredictOptions(Prompt="0", Tokens=20)))
        await asyncio.to_thread(workbench.started.wait, 5)
        order: list[str] = []

        async def one(i: int) -> None:
            reply = await stub.Predict(pb.PredictOptions(Prompt=str(i), Tokens=1))
            order.append(reply.message.decode().split(":")[0])

        tasks = []
        for i in range(1, 5):
            tasks.append(asyncio.create_task(one(i)))
            while served.runtime.admission.waiting < i:
                await asyncio.sleep(0.005)
        await asyncio.gather(first, *tasks)
        assert order == ["1", "2", "3", "4"]


async def test_deadline_stops_the_engine_work_and_frees_the_slot(
    loaded: Served, workbench: Workbench
) -> None:
    # The deadline travels as grpc-timeout: the server cancels the call on its own clock.
    with pytest.raises((GRPCError, TimeoutError)):
        await loaded.client.backend.Predict(pb.PredictOptions(Prompt="x", Tokens=10_000), timeout=0.3)
    assert await asyncio.to_thread(workbench.stopped_early.wait, 5)
    assert workbench.finished == 0
    reply = await loaded.client.backend.Predict(pb.PredictOptions(Prompt="next", Tokens=1), timeout=5)
    assert reply.message == b"next:1"


async def test_client_disconnect_stops_a_stream(loaded: Served, workbench: Workbench) -> None:
    async with connect(loaded.addr) as client, client.backend.PredictStream.open() as stream:
        await stream.send_message(pb.PredictOptions(Prompt="s", Tokens=10_000), end=True)
        first = await stream.recv_message()
        assert first is not None
        await stream.cancel()
    assert await asyncio.to_thread(workbench.stopped_early.wait, 5)
    while loaded.runtime.admission.running:
        await asyncio.sleep(0.01)
    reply = await loaded.client.backend.Predict(pb.PredictOptions(Prompt="after", Tokens=1), timeout=5)
    assert reply.message == b"after:1"


async def test_a_stream_delivers_every_chunk(loaded: Served) -> None:
    replies = await loaded.client.backend.PredictStream(pb.PredictOptions(Prompt="s", Tokens=5))
    assert b"".join(r.message for r in replies) == b"0 1 2 3 4 "
    assert replies[-1].tokens == 5


async def test_model_identity_mismatch_is_not_found(loaded: Served) -> None:
    err = await _status_of(
        loaded.client.backend.Predict(pb.PredictOptions(Prompt="x", ModelIdentity="other"))
    )
    assert err.status == Status.NOT_FOUND
    assert "model identity mismatch" in (err.message or "")
    ok = await loaded.client.backend.Predict(pb.PredictOptions(Prompt="x", ModelIdentity="bench-model"))
    assert ok.message == b"x:0"
    empty = await loaded.client.backend.Predict(pb.PredictOptions(Prompt="y"))
    assert empty.message == b"y:0"


async def test_token_is_required_except_on_standard_health() -> None:
    async with serving(Workbench(), auth_token="s3cret") as served:
        async with connect(served.addr) as anonymous:
            err = await _status_of(anonymous.backend.Health(pb.HealthMessage()))
            assert err.status == Status.UNAUTHENTICATED
            assert "authorization: Bearer" in (err.message or "")
            check = await anonymous.health.Check(HealthCheckRequest())
            assert check.status == HealthCheckResponse.SERVING
        async with connect(served.addr, token="wrong") as wrong:
            err = await _status_of(wrong.backend.LoadModel(pb.ModelOptions(Model="m")))
            assert err.status == Status.UNAUTHENTICATED
        assert await served.client.healthy()  # the kit's client sends the right token


async def test_request_over_the_size_cap_is_resource_exhausted(served: Served) -> None:
    async with serving(Workbench(), max_message_bytes=64 * 1024) as small:
        await load(small)
        err = await _status_of(small.client.backend.Predict(pb.PredictOptions(Prompt="x" * 100_000)))
        assert err.status == Status.RESOURCE_EXHAUSTED
        assert "exceeds the 65536 byte limit" in (err.message or "")
        assert await small.client.healthy()


async def test_reply_over_the_size_cap_is_resource_exhausted() -> None:
    async with serving(Workbench(), max_message_bytes=64 * 1024) as small:
        await load(small)
        err = await _status_of(small.client.backend.Embedding(pb.PredictOptions(Embeddings="e" * 20_000)))
        assert err.status == Status.RESOURCE_EXHAUSTED
        assert "reply of" in (err.message or "")


async def test_metrics_count_calls_by_rpc_and_code() -> None:
    port = free_port()
    async with serving(Workbench(), metrics_addr=f"127.0.0.1:{port}") as served:
        served.runtime.metrics.serve(f"127.0.0.1:{port}")
        await load(served)
        await served.client.backend.Predict(pb.PredictOptions(Prompt="x", Tokens=1))
        with pytest.raises(GRPCError):
            await served.client.backend.Predict(pb.PredictOptions(Prompt="x", Tokens=-1))
        await served.client.backend.PredictStream(pb.PredictOptions(Prompt="s", Tokens=3))
        text = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        )
    assert 'localfleet_calls_total{code="OK",rpc="Predict"} 1.0' in text
    assert 'localfleet_calls_total{code="INVALID_ARGUMENT",rpc="Predict"} 1.0' in text
    assert 'localfleet_call_seconds_count{rpc="Predict"} 2.0' in text
    assert "localfleet_model_load_seconds_count 1.0" in text
    assert "localfleet_queue_depth 0.0" in text
    assert "localfleet_in_flight 0.0" in text
    assert "localfleet_tokens_generated_total 3.0" in text
    assert "localfleet_time_to_first_token_seconds_count 1.0" in text
