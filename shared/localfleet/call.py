"""One RPC's handle for a backend: its stop flag, and running blocking engine work off the event loop."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from grpclib.metadata import Deadline

from localfleet.errors import Cancelled
from localfleet.paths import PathPolicy

if TYPE_CHECKING:
    from localfleet.metrics import Metrics

P = ParamSpec("P")
T = TypeVar("T")

_DONE = object()
log = logging.getLogger(__name__)


class Call:
    """Handed to every backend RPC method.

    `stop` is set when the client cancels, disconnects or passes its deadline, and when the process
    drains past its grace period. Engine code running in a worker thread checks it between steps
    (tokens, segments, chunks) and returns early; the runtime waits for that before it frees the slot,
    so a slot is never handed to a new call while old work still runs.
    """

    def __init__(
        self,
        rpc: str,
        executor: Executor,
        deadline: Deadline | None = None,
        *,
        paths: PathPolicy | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.rpc = rpc
        self.stop = threading.Event()
        #: checks request file paths against LOCALFLEET_PATH_ROOTS
        self.paths = paths or PathPolicy([])
        self._metrics = metrics
        self._started = time.perf_counter()
        self._first_token_seen = False
        #: set with `stop` when the process drains past its grace period: the call then ends UNAVAILABLE
        self.shutdown = False
        self.deadline = deadline
        self._executor = executor

    def count_tokens(self, n: int = 1) -> None:
        """For generating backends: record tokens produced (and time to first token) in the metrics."""
        if self._metrics is None or n <= 0:
            return
        if not self._first_token_seen:
            self._first_token_seen = True
            self._metrics.first_token.observe(time.perf_counter() - self._started)
        self._metrics.tokens.inc(n)

    def progress(self, done: int, total: int) -> None:
        """For engine code doing long work in steps (denoising): stop here if asked, else count the step
        in the metrics and the log."""
        self.raise_if_stopped()
        self.count_step(done, total)

    def count_step(self, done: int, total: int) -> None:
        """`progress` for engines that cannot be stopped midway (it never raises)."""
        if self._metrics is not None:
            self._metrics.steps.labels(self.rpc).inc()
        log.info("%s: step %d/%d", self.rpc, done, total)

    def raise_if_stopped(self) -> None:
        """For engine code: call between steps to stop promptly."""
        if self.stop.is_set():
            raise Cancelled(f"{self.rpc} stopped: the caller went away or its deadline passed")

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run blocking `fn` in a worker thread; on cancellation set `stop` and wait for `fn` to return."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            self.stop.set()
            await until_done(future)
            raise

    async def iterate(
        self, fn: Callable[P, Iterator[T]], *args: P.args, **kwargs: P.kwargs
    ) -> AsyncIterator[T]:
        """Run blocking generator `fn` in a worker thread and yield its items as they come.

        The thread stops pulling items as soon as `stop` is set (cancellation, or the consumer leaving
        early), so a disconnected stream stops generating within one item.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()

        def pump() -> None:
            items = fn(*args, **kwargs)
            try:
                for item in items:
                    if self.stop.is_set():
                        break
                    loop.call_soon_threadsafe(queue.put_nowait, item)
            except BaseException as exc:
                loop.call_soon_threadsafe(queue.put_nowait, _Raised(exc))
            finally:
                close = getattr(items, "close", None)
                if close is not None:
                    close()  # the engine's own cleanup runs now, in this thread, not at garbage collection
                loop.call_soon_threadsafe(queue.put_nowait, _DONE)

        future = loop.run_in_executor(self._executor, pump)
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    break
                if isinstance(item, _Raised):
                    raise item.exc
                yield item  # type: ignore[misc]  # items are the generator's T; the queue is untyped
        finally:
            self.stop.set()
            await until_done(future)


async def until_done(future: asyncio.Future[T]) -> None:
    """Wait for worker-thread work to end, however often this task is cancelled meanwhile.

    grpclib may cancel a handler twice (deadline, then stream reset): the slot must stay taken until the
    engine has really stopped, so a later cancellation does not cut this wait short.
    """
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            continue
        except BaseException:  # the work's own error: the caller already has its answer
            break
    if not future.cancelled():
        future.exception()  # mark it retrieved: no "exception was never retrieved" noise


class _Raised:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
