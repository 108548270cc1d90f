"""Dynamic batching: concurrent calls gathered into one engine batch, each answered with its own result.

LocalAI sends one Embedding call per input text, so a burst of texts arrives as a burst of calls. A model
runs a batch of 32 short texts in about the time it takes for a few single ones; the batcher turns
concurrent calls into such batches:

    batcher = Batcher(engine.embed, BatchLimits(window=0.002, max_size=32))
    vector = await batcher.submit(text, stop=call.stop)

When the engine is free and a call is waiting, a batch opens; it takes every call that arrives until
`window` (a few ms) passes without a new one, or `max_size` calls are in, or MAX_WINDOWS windows have
passed. A lone call runs at once, without a window, unless concurrent callers were seen within the last
COMPANY_MEMORY seconds (a batch of more than one, or a call that arrived while a batch ran): a caller that
sends its texts one after another (as core does for one request's inputs) pays no window per text,
while concurrent callers keep being gathered. Calls that arrive while a
batch runs wait for it and go in the next one. One batch runs at a
time, in the batcher's own worker thread: `fn(items, stop)` gets the items in arrival order and returns
one result per item, in the same order; a result that is an exception is raised to that caller alone.
An exception raised by `fn` is raised to every caller of that batch.

Cost: given `cost` (what one item costs the engine: its characters, say) and `max_cost`, a batch holds
items up to that much in all. It begins with the call that has waited longest, whatever its cost (so
nothing waits forever), and takes the others in arrival order where they fit; those that do not fit go
first into the next batch. So one caller's large item runs in a batch of its own, or with what fits
beside it, instead of holding up a full batch of small ones.

Cancellation: a caller that goes away before its batch starts leaves it; one whose `stop` flag (the
call's) is set by then gets `Cancelled`. A caller cancelled while its batch runs waits for the batch to
end before it leaves (as `Call.run` does: the slot is handed on only once the work stopped), and when
every caller of a running batch has gone, the batch's `stop` event is set for the engine to check.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from pydantic import Field

from localfleet.call import until_done
from localfleet.errors import Cancelled, EngineFailure
from localfleet.options import BackendOptions

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: the longest a batch stays open while calls keep arriving, in windows
MAX_WINDOWS = 4
#: how long after a sign of concurrent callers a lone call still waits a window for company (seconds)
COMPANY_MEMORY = 0.1

#: a batch function: items in arrival order and a stop event -> one result (or exception) per item
BatchFn = Callable[[list[T], threading.Event], Sequence[R | BaseException]]


@dataclass(frozen=True)
class BatchLimits:
    """How long the first call of a batch waits for company, and how large a batch may grow."""

    window: float = 0.002  # seconds
    max_size: int = 32

    def __post_init__(self) -> None:
        if self.window < 0:
            raise ValueError(f"batch window must be >= 0 seconds, got {self.window}")
        if self.max_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.max_size}")

    @classmethod
    def from_settings(cls, window_ms: float | None = None, max_size: int | None = None) -> BatchLimits:
        """Per-model values where given, else the settings (LOCALFLEET_BATCH_WINDOW_MS, _MAX_SIZE)."""
        from localfleet.settings import Settings

        settings = Settings()
        return cls(
            window=(settings.batch_window_ms if window_ms is None else window_ms) / 1000,
            max_size=settings.batch_max_size if max_size is None else max_size,
        )


class BatchOptions(BackendOptions):
    """LoadModel options of a batching backend: per-model values over the settings."""

    batch_window_ms: float | None = Field(None, ge=0, description="default LOCALFLEET_BATCH_WINDOW_MS")
    batch_max_size: int | None = Field(None, ge=1, description="default LOCALFLEET_BATCH_MAX_SIZE")

    def batch_limits(self) -> BatchLimits:
        return BatchLimits.from_settings(self.batch_window_ms, self.batch_max_size)


@dataclass(eq=False)
class _Running:
    """A batch in the engine: its stop event, set once every one of its callers has gone."""

    stop: threading.Event
    callers: int

    def leave(self) -> None:
        self.callers -= 1
        if self.callers == 0:
            self.stop.set()


@dataclass(eq=False)
class _Entry(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    stop: threading.Event | None
    cost: float = 0.0
    arrived: float = field(default_factory=time.monotonic)
    running: _Running | None = None


class Batcher(Generic[T, R]):
    """Gathers concurrent `submit` calls into batches for `fn`; see the module docstring."""

    def __init__(
        self,
        fn: BatchFn[T, R],
        limits: BatchLimits | None = None,
        *,
        name: str = "batch",
        cost: Callable[[T], float] | None = None,
        max_cost: float = math.inf,
    ) -> None:
        if max_cost <= 0:
            raise ValueError(f"a batch's max_cost must be > 0, got {max_cost}")
        self.fn = fn
        self.limits = limits or BatchLimits()
        self.name = name
        self.cost = cost
        self.max_cost = max_cost
        self._pending: deque[_Entry[T, R]] = deque()
        # Created on the event loop at the first submit: a batcher may be built in a worker thread (load).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._arrived: asyncio.Event | None = None
        self._driver: asyncio.Task[None] | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-batch")
        self._closed = False
        self._company_until = 0.0  # monotonic time until which a lone call waits for company
        #: batches run and items answered, for tests, benchmarks and logs
        self.batches = 0
        self.items = 0

    async def submit(self, item: T, stop: threading.Event | None = None) -> R:
        """The result for `item`, computed in a batch with whatever else arrives within the window."""
        if self._closed:
            raise EngineFailure(f"{self.name}: the model was unloaded; load it again")
        loop = asyncio.get_running_loop()
        if self._arrived is None:
            self._loop = loop
            self._arrived = asyncio.Event()
        cost = self.cost(item) if self.cost is not None else 0.0
        entry: _Entry[T, R] = _Entry(item, loop.create_future(), stop, cost)
        self._pending.append(entry)
        self._arrived.set()
        if self._driver is None or self._driver.done():
            self._driver = loop.create_task(self._drive(self._arrived), name=f"{self.name}-batcher")
        try:
            # Shielded: a caller cancelled mid-batch must not cancel the shared future under the driver.
            return await asyncio.shield(entry.future)
        except asyncio.CancelledError:
            if entry.running is None:  # its batch has not started: just leave the queue
                with contextlib.suppress(ValueError):
                    self._pending.remove(entry)
                entry.future.cancel()
            else:
                # The batch runs on for the others; wait for it, as Call.run waits for its work.
                entry.running.leave()
                await until_done(entry.future)
            raise

    def close(self) -> None:
        """No new batches (any thread); callers still queued get an error, a running batch finishes."""
        self._closed = True
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop already stopped: nobody is waiting
                self._loop.call_soon_threadsafe(self._fail_pending)
        self._worker.shutdown(wait=False)

    def _fail_pending(self) -> None:
        while self._pending:
            entry = self._pending.popleft()
            if not entry.future.done():
                entry.future.set_exception(EngineFailure(f"{self.name}: the model was unloaded; retry"))

    # -- the driver: one task per burst, gone when the queue is empty ---------------------------
    async def _drive(self, arrived: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while self._pending and not self._closed:
            await self._gather(arrived)
            batch = self._take()
            if not batch:
                continue
            running = _Running(threading.Event(), len(batch))
            for entry in batch:
                entry.running = running
            work = loop.run_in_executor(self._worker, self._run, [e.item for e in batch], running.stop)
            results: Sequence[R | BaseException] | BaseException
            try:
                results = await asyncio.shield(work)
            except asyncio.CancelledError:  # the loop is shutting down: nobody will wait for an answer
                running.stop.set()
                self._answer(batch, EngineFailure(f"{self.name}: shutting down"))
                raise
            except Exception as exc:  # the engine failed: every caller of this batch hears it
                results = exc
            self.batches += 1
            self.items += len(batch)
            if len(batch) > 1 or self._pending:  # others called while this one was in the engine
                self._company_until = time.monotonic() + COMPANY_MEMORY
            self._answer(batch, results)

    async def _gather(self, arrived: asyncio.Event) -> None:
        """Hold the batch open while calls keep coming.

        It closes when `window` passes with no new call (counting from when the engine became free, so
        callers just answered have time to send their next call), when it is full (in size or cost), or
        at the latest MAX_WINDOWS windows after the engine became free; at once for a lone call with no
        recent company.
        """
        window = self.limits.window
        opened = time.monotonic()
        if len(self._pending) == 1 and opened >= self._company_until:
            return  # no sign of concurrent callers: waiting would only delay this one
        latest = opened + window * MAX_WINDOWS
        while self._pending and not self._full():
            quiet_until = max(opened, self._pending[-1].arrived) + window
            left = min(quiet_until, latest) - time.monotonic()
            if left <= 0:
                return
            arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrived.wait(), left)

    def _full(self) -> bool:
        pending = self._pending
        return len(pending) >= self.limits.max_size or sum(e.cost for e in pending) >= self.max_cost

    def _take(self) -> list[_Entry[T, R]]:
        """The next batch: the longest waiting call first, then those that fit, in arrival order."""
        batch: list[_Entry[T, R]] = []
        later: list[_Entry[T, R]] = []  # did not fit: first in line for the next batch
        spent = 0.0
        while self._pending and len(batch) < self.limits.max_size:
            entry = self._pending.popleft()
            if entry.future.done():
                continue
            if entry.stop is not None and entry.stop.is_set():
                entry.future.set_exception(
                    Cancelled(f"{self.name}: stopped before its batch ran (the caller went away)")
                )
                continue
            if batch and spent + entry.cost > self.max_cost:
                later.append(entry)
                continue
            batch.append(entry)
            spent += entry.cost
        self._pending.extendleft(reversed(later))
        return batch

    def _run(self, items: list[T], stop: threading.Event) -> Sequence[R | BaseException]:
        started = time.perf_counter()
        results = self.fn(items, stop)
        log.debug("%s: batch of %d in %.1f ms", self.name, len(items), (time.perf_counter() - started) * 1e3)
        return results

    def _answer(
        self, batch: list[_Entry[T, R]], results: Sequence[R | BaseException] | BaseException
    ) -> None:
        if not isinstance(results, BaseException) and len(results) != len(batch):
            results = EngineFailure(
                f"{self.name}: the engine returned {len(results)} results for a batch of {len(batch)}"
            )
        for index, entry in enumerate(batch):
            if entry.future.done():
                continue
            outcome = results if isinstance(results, BaseException) else results[index]
            if isinstance(outcome, BaseException):
                entry.future.set_exception(_for_one(outcome) if outcome is results else outcome)
            else:
                entry.future.set_result(outcome)


def _for_one(exc: BaseException) -> BaseException:
    """A batch-wide exception is raised in many callers: give each its own copy where it can be made."""
    try:
        copy = type(exc)(*exc.args)
    except Exception:
        return exc
    copy.__cause__ = exc.__cause__ if exc.__cause__ is not None else exc
    return copy
