"""The step lines a long generation writes to the log (`Call.progress`), watched by a test as they come."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager


class StepLog(logging.Handler):
    """Keeps every "RPC: step n/N" line, and sets `seen` on the test's event loop at each."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(logging.INFO)
        self.loop = loop
        self.steps: list[str] = []
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if ": step " in text:
            self.steps.append(text)
            self.loop.call_soon_threadsafe(self.seen.set)


@contextmanager
def watching_steps() -> Iterator[StepLog]:
    """A StepLog on the runtime's call logger for the block (called from inside the test's loop)."""
    logger = logging.getLogger("localfleet.call")
    handler, old = StepLog(asyncio.get_running_loop()), logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
