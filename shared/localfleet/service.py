"""The Backend gRPC service: every RPC of the contract, routed through the runtime's checks.

Built from the proto's descriptor rather than the generated abstract base, so every RPC exists: those a
backend does not define answer UNIMPLEMENTED with its name. This is the one place where exceptions become
gRPC statuses (one error interceptor), and where every call is counted and timed.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream

from localfleet.call import Call
from localfleet.errors import BackendError, Unavailable
from localfleet.proto import backend_pb2 as pb
from localfleet.runtime import Runtime

log = logging.getLogger(__name__)

SERVICE = pb.DESCRIPTOR.services_by_name["Backend"]
#: RPCs the runtime answers itself, for every backend
CONTROL = frozenset({"Health", "LoadModel", "Free", "Status"})

_CARDINALITY = {
    (False, False): Cardinality.UNARY_UNARY,
    (False, True): Cardinality.UNARY_STREAM,
    (True, False): Cardinality.STREAM_UNARY,
    (True, True): Cardinality.STREAM_STREAM,
}

ServerStream = Stream[Any, Any]


class BackendService:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        backend = runtime.backend
        self.served = sorted(m.name for m in SERVICE.methods if m.name in CONTROL or hasattr(backend, m.name))
        if stray := sorted(set(backend.limit_groups) - (set(self.served) - CONTROL)):
            raise TypeError(f"{type(backend).__name__}.limit_groups names RPCs it does not serve: {stray}")

    def __mapping__(self) -> dict[str, Handler]:
        mapping = {}
        for method in SERVICE.methods:
            request_type = getattr(pb, method.input_type.name)
            reply_type = getattr(pb, method.output_type.name)
            cardinality = _CARDINALITY[(method.client_streaming, method.server_streaming)]
            mapping[f"/{SERVICE.full_name}/{method.name}"] = Handler(
                self._handler(method.name, cardinality), cardinality, request_type, reply_type
            )
        return mapping

    def _handler(self, rpc: str, cardinality: Cardinality) -> Callable[[ServerStream], Awaitable[None]]:
        body: Callable[[ServerStream], Awaitable[None]]
        if rpc in CONTROL:
            body = getattr(self, f"_{rpc.lower()}")
        elif hasattr(self.runtime.backend, rpc):
            body = self._inference(rpc, cardinality)
        else:
            body = self._unimplemented(rpc)
        return self._observed(rpc, body)

    def _observed(
        self, rpc: str, body: Callable[[ServerStream], Awaitable[None]]
    ) -> Callable[[ServerStream], Awaitable[None]]:
        metrics = self.runtime.metrics
        counted = rpc not in {"Health", "Status"}  # probes must not hold up a drain

        async def handle(stream: ServerStream) -> None:
            started = time.perf_counter()
            code = Status.OK
            try:
                if counted:
                    self.runtime.call_started()
                elif self.runtime.draining:
                    raise GRPCError(Status.UNAVAILABLE, "this backend is shutting down (draining)")
                try:
                    await body(stream)
                finally:
                    if counted:
                        self.runtime.call_ended()
            except GRPCError as exc:
                code = exc.status
                raise
            except BackendError as exc:
                code = exc.status
                raise GRPCError(exc.status, str(exc)) from None
            except asyncio.CancelledError:
                code = Status.CANCELLED
                raise
            except Exception as exc:
                code = Status.INTERNAL
                log.exception("%s failed", rpc)
                raise GRPCError(
                    Status.INTERNAL, f"{self.runtime.backend.name} {rpc} failed: {type(exc).__name__}: {exc}"
                ) from None
            finally:
                metrics.calls.labels(rpc, code.name).inc()
                metrics.latency.labels(rpc).observe(time.perf_counter() - started)

        return handle

    # -- the control RPCs ----------------------------------------------------------------------
    async def _health(self, stream: ServerStream) -> None:
        await stream.recv_message()
        await stream.send_message(pb.Reply(message=b"OK"))

    async def _status(self, stream: ServerStream) -> None:
        await stream.recv_message()
        # Off the event loop: NVML and an engine's own accounting may block; Health must not wait on them.
        status = await asyncio.get_running_loop().run_in_executor(None, self.runtime.status)
        await stream.send_message(status)

    async def _loadmodel(self, stream: ServerStream) -> None:
        request = await stream.recv_message()
        assert request is not None  # a unary call always carries its message
        await stream.send_message(await self.runtime.load(request))

    async def _free(self, stream: ServerStream) -> None:
        await stream.recv_message()
        await stream.send_message(await self.runtime.free())

    # -- everything else -------------------------------------------------------------------------
    def _unimplemented(self, rpc: str) -> Callable[[ServerStream], Awaitable[None]]:
        async def body(stream: ServerStream) -> None:
            raise GRPCError(
                Status.UNIMPLEMENTED,
                f"{self.runtime.backend.name} does not implement {rpc}; it serves {', '.join(self.served)}",
            )

        return body

    def _inference(self, rpc: str, cardinality: Cardinality) -> Callable[[ServerStream], Awaitable[None]]:
        runtime = self.runtime
        method = getattr(runtime.backend, rpc)
        streaming_out = cardinality in (Cardinality.UNARY_STREAM, Cardinality.STREAM_STREAM)
        streaming_in = cardinality in (Cardinality.STREAM_UNARY, Cardinality.STREAM_STREAM)
        group = runtime.backend.limit_groups.get(rpc)
        if streaming_out != inspect.isasyncgenfunction(method):
            raise TypeError(
                f"{type(runtime.backend).__name__}.{rpc} must be an async generator iff it streams"
            )

        async def body(stream: ServerStream) -> None:
            request: Any
            if streaming_in:
                request = _requests(stream)
            else:
                request = await stream.recv_message()
                runtime.check_identity(getattr(request, "ModelIdentity", ""))
            runtime.require_model()
            async with runtime.admission.slot(group) as ticket, runtime.gate.shared():
                runtime.require_model()  # a Free may have run while this call queued
                await ticket.settle()  # a LoadModel may have lowered its group's limit meanwhile
                call = Call(
                    rpc,
                    runtime.executor,
                    stream.deadline,
                    paths=runtime.paths,
                    metrics=runtime.metrics,
                )
                runtime.calls.add(call)
                try:
                    if streaming_out:
                        async with contextlib.aclosing(method(request, call)) as replies:
                            async for reply in replies:
                                _check_shutdown(call)
                                await stream.send_message(reply)
                        _check_shutdown(call)
                    else:
                        reply = await method(request, call)
                        _check_shutdown(call)  # work cut short by shutdown is no answer
                        await stream.send_message(reply)
                except asyncio.CancelledError:
                    call.stop.set()
                    raise
                finally:
                    runtime.calls.discard(call)

        return body


def _check_shutdown(call: Call) -> None:
    if call.shutdown:
        raise Unavailable(f"{call.rpc} was stopped: the backend shut down before it finished; retry")


async def _requests(stream: ServerStream) -> AsyncIterator[Any]:
    async for message in stream:
        yield message
