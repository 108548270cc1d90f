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
import threading
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
    listening: float  # when its port first accepted a connection
    log: list[str]  # its stderr lines so far


@contextmanager
def spawn(
    backend: str, *args: str, env: dict[str, str] | None = None, timeout: float = 20
) -> Iterator[Process]:
    """Run `python -m localfleet serve BACKEND` on a free port; return once its port accepts connections.

    Its stderr is read all along by a thread (so a chatty server never blocks on a full pipe) and kept
    in `Process.log` for assertions.
    """
    addr = f"127.0.0.1:{free_port()}"
    host, port = addr.rsplit(":", 1)
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    started = time.monotonic()
    popen = subprocess.Popen(
        [sys.executable, "-m", "localfleet", "serve", backend, "--addr", addr, *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=full_env,
    )
    log: list[str] = []
    reader = threading.Thread(target=_collect, args=(popen, log), daemon=True)
    reader.start()
    try:
        deadline = started + timeout
        while True:
            if popen.poll() is not None:
                reader.join(5)
                raise RuntimeError(
                    f"{backend} exited with {popen.returncode} before serving:\n{''.join(log)}"
                )
            try:
                with socket.create_connection((host, int(port)), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{backend} did not listen within {timeout} s:\n{''.join(log)}"
                    ) from None
                time.sleep(0.01)  # a retry pause while the port opens, not a wait for a result
        yield Process(popen, addr, started, time.monotonic(), log)
    finally:
        if popen.poll() is None:
            popen.kill()
        popen.wait()
        reader.join(5)


def _collect(popen: subprocess.Popen[str], log: list[str]) -> None:
    assert popen.stderr is not None
    for line in popen.stderr:
        log.append(line)
    popen.stderr.close()
