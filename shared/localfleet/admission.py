"""Admission control: a per-model concurrency limit, smaller per-group limits, one bounded FIFO queue."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager

from localfleet.errors import Overloaded


class Limit:
    """At most `size` holders at once, the rest served in arrival order; `size` may change at any time.

    Unlike asyncio.Semaphore it can be resized while calls hold it or wait for it (a LoadModel with new
    options), which is why admission uses it.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.held = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def full(self) -> bool:
        """Whether a new caller would wait (behind earlier ones too: no overtaking)."""
        return self.held >= self.size or bool(self._waiters)

    async def acquire(self, *, first: bool = False) -> None:
        """Wait for a turn; `first` goes to the head of the line (a turn given back, see Ticket.settle)."""
        if not self.full:
            self.held += 1
            return
        turn = asyncio.get_running_loop().create_future()
        if first:
            self._waiters.appendleft(turn)
        else:
            self._waiters.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.cancelled():
                with contextlib.suppress(ValueError):  # a release may have dropped it already
                    self._waiters.remove(turn)
            else:
                self.release()  # handed over just as its caller went away: pass it on
            raise

    def release(self) -> None:
        self.held -= 1
        self._hand_on()

    def resize(self, size: int) -> None:
        self.size = size
        self._hand_on()

    def _hand_on(self) -> None:
        while self._waiters and self.held < self.size:
            turn = self._waiters.popleft()
            if not turn.done():  # a cancelled waiter takes no turn
                self.held += 1
                turn.set_result(None)


class Ticket:
    """An admitted call's hold on its group's limit (None: the RPC has no group)."""

    def __init__(self, limit: Limit | None) -> None:
        self._limit = limit
        self.holds = limit is not None

    async def settle(self) -> None:
        """Once the call is past the model gate: give back a turn that a lowered limit no longer allows,
        and wait for a new one at the head of the line.

        A LoadModel that lowers a group's limit runs while calls already given turns under the old limit
        wait at the gate; without this, all of them would run at once on the new model.
        """
        limit = self._limit
        if limit is None or limit.held <= limit.size:
            return
        self.holds = False
        limit.release()
        await limit.acquire(first=True)
        self.holds = True


class Admission:
    """At most `limit` calls run at once; at most `queue_size` wait; the next one is refused at once.

    Refusing fast (RESOURCE_EXHAUSTED) lets core or a load balancer retry elsewhere instead of piling
    up requests whose callers time out long before their turn comes.

    A call may belong to a group (the backend's `limit_groups`) with a smaller limit of its own, sized
    by `resize` at each load. It waits for its group before it takes a slot, so calls held back by their
    group hold no slot that other RPCs could use; while it waits it counts toward the same queue bound.
    `on_depth` is told the number of waiting calls whenever it changes (the queue-depth metric).
    """

    def __init__(
        self,
        limit: int,
        queue_size: int,
        groups: Iterable[str] = (),
        on_depth: Callable[[int], None] = lambda depth: None,
    ) -> None:
        self.limit = limit
        self.queue_size = queue_size
        self._slots = Limit(limit)
        # Until the first load sizes them; no call gets past the runtime's model check before that.
        self.groups = {name: Limit(1) for name in groups}
        self._on_depth = on_depth
        self.running = 0
        self.waiting = 0

    def check(self, limits: Mapping[str, int]) -> None:
        """Raise ValueError naming what is wrong with new group limits (before anything is unloaded)."""
        if set(limits) != set(self.groups):
            raise ValueError(
                f"group limits given for {sorted(limits)}, but the backend's groups are {sorted(self.groups)}"
            )
        for name, size in limits.items():
            if not isinstance(size, int) or size < 1:
                raise ValueError(f"the {name} limit must be a whole number >= 1, got {size!r}")

    def resize(self, limits: Mapping[str, int]) -> None:
        """New group limits, from the options of the model being loaded; calls waiting take them at once."""
        self.check(limits)
        for name, size in limits.items():
            self.groups[name].resize(size)

    @asynccontextmanager
    async def slot(self, group: str | None = None) -> AsyncIterator[Ticket]:
        own = self.groups[group] if group is not None else None
        if (self._slots.full or (own is not None and own.full)) and self.waiting >= self.queue_size:
            raise Overloaded(self._refusal(group))
        self._queued(1)
        try:
            # A caller that goes away while queued leaves the queue here (CancelledError), holding nothing.
            if own is not None:
                await own.acquire()
            try:
                await self._slots.acquire()
            except BaseException:
                if own is not None:
                    own.release()
                raise
        finally:
            self._queued(-1)
        self.running += 1
        ticket = Ticket(own)
        try:
            yield ticket
        finally:
            self.running -= 1
            self._slots.release()
            if own is not None and ticket.holds:  # a settle cancelled while waiting holds no turn
                own.release()

    def _queued(self, change: int) -> None:
        self.waiting += change
        self._on_depth(self.waiting)

    def _refusal(self, group: str | None) -> str:
        if group is not None and self.groups[group].full:
            own = self.groups[group]
            return (
                f"queue full: {own.held} calls hold the {group} limit of {own.size} and {self.waiting} "
                f"requests wait; retry later, or raise the LoadModel option {group} or LOCALFLEET_QUEUE_SIZE"
            )
        return (
            f"queue full: {self.running} requests running and {self.waiting} waiting; retry later, "
            "or raise LOCALFLEET_QUEUE_SIZE / LOCALFLEET_CONCURRENCY"
        )
