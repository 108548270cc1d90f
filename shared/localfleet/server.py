"""Bind, serve, drain on SIGTERM, exit when the parent dies: the life of one backend process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Coroutine
from typing import Any

from grpclib.health.service import Health
from grpclib.reflection.service import ServerReflection

from localfleet.auth import require_token
from localfleet.backend import Backend
from localfleet.codec import CappedProtoCodec
from localfleet.drain import DrainingServer
from localfleet.runtime import Runtime
from localfleet.service import BackendService
from localfleet.settings import Settings

log = logging.getLogger(__name__)

#: seconds stopped calls get to notice their stop flag and answer, after the grace period
_STOP_WAIT = 2.0
#: seconds connections get, once calls are over, to hear GOAWAY and be closed by their clients
_GOAWAY_LINGER = 1.0
#: exit status after a second SIGTERM/SIGINT cut a drain short
FORCED_EXIT = 2


class BackendServer:
    """One gRPC server: the Backend service, grpc.health.v1 and reflection, for one backend."""

    def __init__(self, backend: Backend, settings: Settings) -> None:
        self.settings = settings
        self.runtime = Runtime(backend, settings)
        service = BackendService(self.runtime)
        health = Health({service: [self.runtime.readiness]})
        self.server = DrainingServer(
            ServerReflection.extend([service, health]), codec=CappedProtoCodec(settings.max_message_bytes)
        )
        if settings.auth_token:
            require_token(self.server, settings.auth_token)
        self._stopping = asyncio.Event()
        self._grace = settings.grace_period
        self._tasks: set[asyncio.Task[None]] = set()
        #: a load's thread was left running at exit (see Runtime.close)
        self.abandoned = False

    async def start(self, sock: socket.socket | None = None) -> None:
        if sock is None:
            host, port = self.settings.host_port()
            await self.server.start(host, port, reuse_address=True)
        else:
            await self.server.start(sock=sock)
        if self.settings.model:
            self._spawn(self.runtime.load_startup_model())

    def stop(self, grace: float | None = None) -> None:
        """Begin a drain: readiness goes to not serving, new calls get UNAVAILABLE at once, no new
        connection is accepted, and each open one is told GOAWAY (its calls in flight still finish)."""
        if grace is not None:
            self._grace = min(self._grace, grace)
        self.runtime.begin_drain()
        self.server.begin_drain()
        self._stopping.set()

    async def wait_stopped(self) -> None:
        """After stop(): wait for calls in flight up to the grace period, stop the rest, close the
        connections (after their GOAWAY), flush."""
        await self._stopping.wait()
        if not await self.runtime.wait_idle(self._grace):
            log.warning(
                "grace period of %.1f s passed with %d calls in flight; stopping them",
                self._grace,
                self.runtime.in_flight,
            )
            self.runtime.stop_calls()
            # Engine loops check their stop flag every step; what still runs after this is cancelled.
            await self.runtime.wait_idle(_STOP_WAIT)
        await self.server.finish_drain(_GOAWAY_LINGER)
        for task in self._tasks:
            task.cancel()
        self.abandoned = not await self.runtime.close(wait=_STOP_WAIT)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def run(backend: Backend, settings: Settings) -> int:
    """Serve until SIGTERM/SIGINT (drain, exit 0), a second signal (exit at once) or the parent's death."""
    # Read before the port opens: a launcher may exit as soon as it sees the backend serve.
    parent = os.getppid()
    app = BackendServer(backend, settings)
    await app.start()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if app._stopping.is_set():
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(FORCED_EXIT)
        log.info("%s: draining (grace %.0f s)", signal.Signals(signum).name, settings.grace_period)
        app.stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    if settings.metrics_addr:
        app.runtime.metrics.serve(settings.metrics_addr)
    watch = None
    if settings.parent_watch:
        watch = loop.create_task(_watch_parent(app, parent, settings.parent_watch_interval))
    log.info("%s serving on %s (pid %d)", backend.name, settings.addr, os.getpid())
    await app.wait_stopped()
    if watch is not None:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
    log.info("%s stopped", backend.name)
    busy = app.runtime.executor.busy
    if app.abandoned or busy:
        # Work in native code cannot be interrupted, and the interpreter would join its thread at exit.
        log.warning("%d worker threads still busy (a load or engine work); exiting without them", busy)
        logging.shutdown()
        os._exit(0)
    return 0


async def _watch_parent(app: BackendServer, parent: int, interval: float) -> None:
    """When launched by LocalAI core (run.sh), exit once core is gone, so no port or GPU memory is held."""
    if parent <= 1:
        log.debug("no parent to watch (ppid %d)", parent)
        return
    while True:
        await asyncio.sleep(interval)
        if os.getppid() != parent:
            log.warning("parent process %d exited; shutting down", parent)
            app.stop(grace=0)
            return
