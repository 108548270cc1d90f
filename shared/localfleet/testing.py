"""Test kit for backends: a servicer served in-process on a free loopback port, and a client for it.

    async with serving(MyBackend()) as fleet:
        reply = await fleet.client.backend.Health(pb.HealthMessage())

Readiness is awaited (Health OK), never slept for. `spawn` runs a real `localfleet serve` process for
behaviours that need one (signals, start-up time, parent death).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

from localfleet.backend import Backend
from localfleet.client import Client, connect, wait_healthy
from localfleet.server import BackendServer
from localfleet.settings import Settings


@dataclass
class Served:
    server: BackendServer
    addr: str
    client: Client

    @property
    def runtime(self) -> Any:
        return self.server.runtime


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def serving(backend: Backend, **settings: Any) -> AsyncIterator[Served]:
    """Serve `backend` in this event loop on a free port; yields a connected client."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    addr = f"127.0.0.1:{sock.getsockname()[1]}"
    settings.setdefault("parent_watch", False)
    server = BackendServer(backend, Settings(addr=addr, **settings))
    await server.start(sock=sock)
    token = settings.get("auth_token")
    try:
        await wait_healthy(addr, 10, token)
        async with connect(addr, token) as client:
            yield Served(server, addr, client)
    finally:
        server.stop(grace=0)
        await server.wait_stopped()


@dataclass
class Process:
    popen: subprocess.Popen[str]
    addr: str
    started: float  # time.monotonic() just before the process was started
    listening: float  # when its log said it was serving


@contextmanager
def spawn(
    backend: str, *args: str, env: dict[str, str] | None = None, timeout: float = 20
) -> Iterator[Process]:
    """Run `python -m localfleet serve BACKEND` on a free port; wait for its 'serving on' log line."""
    addr = f"127.0.0.1:{free_port()}"
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    started = time.monotonic()
    popen = subprocess.Popen(
        [sys.executable, "-m", "localfleet", "serve", backend, "--addr", addr, *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=full_env,
    )
    try:
        assert popen.stderr is not None
        deadline = started + timeout
        lines: list[str] = []
        while time.monotonic() < deadline:
            line = popen.stderr.readline()
            if not line:
                raise RuntimeError(f"{backend} exited before serving:\n{''.join(lines)}")
            lines.append(line)
            if " serving on " in line:
                break
        else:
            raise TimeoutError(f"{backend} did not serve within {timeout} s:\n{''.join(lines)}")
        yield Process(popen, addr, started, time.monotonic())
    finally:
        if popen.poll() is None:
            popen.kill()
        popen.wait()
        if popen.stderr:
            popen.stderr.close()
