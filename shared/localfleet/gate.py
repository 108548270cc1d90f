"""A readers-writer gate on the loaded model: requests share it, LoadModel and Free take it alone.

Requests never see a model swapped or freed under them; a waiting LoadModel/Free goes before new
requests so it cannot be starved.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class ModelGate:
    def __init__(self) -> None:
        self._cond = asyncio.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        async with self._cond:
            await self._cond.wait_for(lambda: not self._writer and not self._writers_waiting)
            self._readers += 1
        try:
            yield
        finally:
            async with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @asynccontextmanager
    async def exclusive(self, timeout: float | None = None) -> AsyncIterator[None]:
        """The model alone; TimeoutError after `timeout` s of waiting for it (None: no limit)."""
        async with self._cond:
            self._writers_waiting += 1
            try:
                async with asyncio.timeout(timeout):
                    await self._cond.wait_for(lambda: not self._writer and not self._readers)
            finally:
                self._writers_waiting -= 1
                self._cond.notify_all()
            self._writer = True
        try:
            yield
        finally:
            async with self._cond:
                self._writer = False
                self._cond.notify_all()
