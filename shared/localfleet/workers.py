"""The runtime's worker threads, counted while they run backend work.

A thread inside native code (a model load, a generation that never checks its stop flag) cannot be
interrupted, and the interpreter joins every worker at exit: a process told to stop would live on
until that work ends. Counting them lets the server see this and exit without them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class Workers(ThreadPoolExecutor):
    def __init__(self, max_workers: int, thread_name_prefix: str) -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
        self._lock = threading.Lock()
        self._busy = 0

    @property
    def busy(self) -> int:
        """Threads running submitted work now."""
        with self._lock:
            return self._busy

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        return super().submit(self._counted, fn, *args, **kwargs)

    def _counted(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        with self._lock:
            self._busy += 1
        try:
            return fn(*args, **kwargs)
        finally:
            with self._lock:
                self._busy -= 1
