"""Admission control: a per-model concurrency limit and a bounded FIFO queue in front of it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from localfleet.errors import Overloaded


class Admission:
    """At most `limit` calls run at once; at most `queue_size` wait; the next one is refused at once.

    Refusing fast (RESOURCE_EXHAUSTED) lets core or a load balancer retry elsewhere instead of piling
    up requests whose callers time out long before their turn comes.
    """

    def __init__(self, limit: int, queue_size: int) -> None:
        self.limit = limit
        self.queue_size = queue_size
        self._slots = asyncio.Semaphore(limit)
        self.running = 0
        self.waiting = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._slots.locked() and self.waiting >= self.queue_size:
            raise Overloaded(
                f"queue full: {self.running} requests running and {self.waiting} waiting; retry later, "
                "or raise LOCALFLEET_QUEUE_SIZE / LOCALFLEET_CONCURRENCY"
            )
        self.waiting += 1
        try:
            # A caller that goes away while queued leaves the queue here (CancelledError), taking no slot.
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            self._slots.release()
