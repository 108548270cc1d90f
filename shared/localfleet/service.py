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
from localfleet.codec import decoded_bytes
from localfleet.errors import BackendError, BadInput, Overloaded, Unavailable
from localfleet.memory import trim_after_large
from localfleet.proto import backend_pb2 as pb
from localfleet.runtime import Runtime

log = logging.getLogger(__name__)

SERVICE = pb.DESCRIPTOR.services_by_name["Backend"]
#: RPCs the runtime answers itself, for every backend
CONTROL = frozenset({"Health", "LoadModel", "Free", "Status"})
#: the most bytes of a status message: longer ones are cut (see `_bounded`)
MAX_STATUS_BYTES = 1024
#: how allocation failures read when an engine reports them as a plain exception (ONNX Runtime's arena,
#: std::bad_alloc passed through, a GPU out of memory)
_ALLOCATION_FAILED = ("failed to allocate memory", "bad_alloc", "bad allocation", "out of memory")

_CARDINALITY = {
    (False, False): Cardinality.UNARY_UNARY,
    (False, True): Cardinality.UNARY_STREAM,
    (True, False): Cardinality.STREAM_UNARY,
    (True, True): Cardinality.STREAM_STREAM,
}

ServerStream = Stream[Any, Any]


class _LateArrivals(logging.Filter):
    """grpclib logs a request whose deadline passed before its handler could start as an ERROR with a
    traceback; with clients that set deadlines that is traffic, not a fault: one INFO line instead.

    Only a deadline makes grpclib log a TimeoutError: every handler here turns its own exceptions into
    statuses.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if record.levelno < logging.ERROR or not isinstance(exc, TimeoutError):
            return True
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.msg, record.args = "a request's deadline passed before it could start; not run", ()
        record.exc_info, record.exc_text = None, None
        return logging.getLogger(record.name).isEnabledFor(logging.INFO)


_LATE_ARRIVALS = _LateArrivals()


class BackendService:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        logging.getLogger("grpclib.server").addFilter(_LATE_ARRIVALS)  # once: addFilter skips a repeat
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
            except asyncio.CancelledError:
                code = Status.CANCELLED
                raise
            except Exception as exc:
                error = self._failure(rpc, exc)
                code = error.status
                raise error from None
            finally:
                metrics.calls.labels(rpc, code.name).inc()
                metrics.latency.labels(rpc).observe(time.perf_counter() - started)

        return handle

    def _failure(self, rpc: str, exc: Exception) -> GRPCError:
        """The status an exception ends a call with, logged once; a traceback only for engine failures."""
        if isinstance(exc, GRPCError):
            return GRPCError(exc.status, _bounded(exc.message), exc.details)
        if isinstance(exc, BackendError):
            message = _bounded(str(exc))
            log.info("%s: %s: %s", rpc, exc.status.name, message)
            return GRPCError(exc.status, message)
        if (known := _not_an_engine_bug(exc)) is not None:
            message = _bounded(str(known))
            log.warning("%s: %s: %s (%s)", rpc, known.status.name, message, type(exc).__name__)
            return GRPCError(known.status, message)
        log.exception("%s failed", rpc)
        message = f"{self.runtime.backend.name} {rpc} failed: {type(exc).__name__}: {exc}"
        return GRPCError(Status.INTERNAL, _bounded(message))

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
            size = 0
            if streaming_in:
                request = _requests(stream)
            else:
                request = await stream.recv_message()
                size = decoded_bytes.get()  # set by the codec, in this task
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
                    trim_after_large(size)  # what a large request's parsing and work left on the heap

        return body


def _bounded(message: str | None) -> str | None:
    """`message` fit to be a status message: valid UTF-8 of at most MAX_STATUS_BYTES, cut with a note.

    The last guard for client input echoed in full: grpclib encodes a status message in pure Python on
    the event loop, and a client refuses a trailer over its header limit anyway.
    """
    if message is None:
        return None
    data = message.encode("utf-8", "backslashreplace")  # an engine's lone surrogate would fail the trailer
    if len(data) <= MAX_STATUS_BYTES:
        return data.decode("utf-8")
    note = f"… (message cut from {len(data)} bytes)"
    return data[: MAX_STATUS_BYTES - len(note.encode())].decode("utf-8", "ignore") + note


def _not_an_engine_bug(exc: Exception) -> BackendError | None:
    """What a request too big or too deep for this process raises, as the error it is; None for the rest."""
    if isinstance(exc, RecursionError):
        return BadInput(f"the request nests too deeply for this backend ({exc}); send flatter input")
    if isinstance(exc, MemoryError) or any(sign in str(exc).lower() for sign in _ALLOCATION_FAILED):
        return Overloaded(
            "the backend could not allocate memory for this request; send less per call (shorter input, "
            "fewer items) or retry when fewer requests run"
        )
    return None


def _check_shutdown(call: Call) -> None:
    if call.shutdown:
        raise Unavailable(f"{call.rpc} was stopped: the backend shut down before it finished; retry")


async def _requests(stream: ServerStream) -> AsyncIterator[Any]:
    async for message in stream:
        yield message
