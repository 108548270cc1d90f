"""A small async client for one backend: used by `localfleet call`, `localfleet up` and the test kit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from grpclib.client import Channel
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from localfleet.proto import backend_grpc
from localfleet.proto import backend_pb2 as pb
from localfleet.settings import MiB, split_addr


@dataclass
class Client:
    channel: Channel
    backend: backend_grpc.BackendStub
    health: HealthStub
    metadata: dict[str, str]

    async def healthy(self, timeout: float = 2.0) -> bool:
        """LocalAI's test: Health answers exactly b"OK"."""
        reply = await self.backend.Health(pb.HealthMessage(), metadata=self.metadata, timeout=timeout)
        return reply.message == b"OK"

    async def ready(self, timeout: float = 2.0) -> bool:
        """The readiness probe's test: grpc.health.v1 says SERVING."""
        reply = await self.health.Check(HealthCheckRequest(), timeout=timeout)
        return reply.status == HealthCheckResponse.SERVING


@asynccontextmanager
async def connect(addr: str, token: str | None = None) -> AsyncIterator[Client]:
    host, port = split_addr(addr)
    channel = Channel(host, port)
    try:
        yield Client(
            channel,
            backend_grpc.BackendStub(channel),
            HealthStub(channel),
            {"authorization": f"Bearer {token}"} if token else {},
        )
    finally:
        channel.close()


async def wait_healthy(addr: str, timeout: float, token: str | None = None) -> None:
    """Wait until Health answers OK, retrying refused connections, up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            async with connect(addr, token) as client:
                if await client.healthy(timeout=max(0.1, deadline - time.monotonic())):
                    return
        except (TimeoutError, OSError) as exc:
            last = exc
        await asyncio.sleep(0.02)  # a retry pause while the port opens, not a wait for a result
    raise TimeoutError(f"{addr} did not answer Health OK within {timeout:.1f} s (last error: {last})")


async def wait_loaded(addr: str, timeout: float, token: str | None = None) -> None:
    """Wait until readiness says SERVING (the start-up model is loaded); fail at once if the load failed."""
    deadline = time.monotonic() + timeout
    async with connect(addr, token) as client:
        while time.monotonic() < deadline:
            status = await client.backend.Status(pb.HealthMessage(), metadata=client.metadata, timeout=2.0)
            if status.state == pb.StatusResponse.ERROR:
                raise RuntimeError(f"{addr}: its start-up model failed to load (its log says why)")
            if status.state != pb.StatusResponse.UNINITIALIZED and await client.ready():
                return
            await asyncio.sleep(0.05)  # a poll of a bounded wait for the load to end
    raise TimeoutError(f"{addr} did not load its start-up model within {timeout:.1f} s")


#: what LocalAI core allows per message, both ways; clients in tests use the same
MAX_MESSAGE = 50 * MiB
