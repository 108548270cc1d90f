"""The dynamic batcher: gathering, bounds, per-caller answers, errors, cancellation, lifecycle."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import pytest

from localfleet.batching import Batcher, BatchLimits
from localfleet.errors import BadInput, Cancelled, EngineFailure


class Engine:
    """Doubles numbers in batches, recording every batch and the thread it ran on."""

    def __init__(self, hold: threading.Event | None = None) -> None:
        self.batches: list[list[int]] = []
        self.threads: set[str] = set()
        self.running = 0
        self.most_at_once = 0
        self.hold = hold  # when given, a batch waits for it (a long engine step)
        self.started = threading.Event()
        self.saw_stop = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, items: list[int], stop: threading.Event) -> Sequence[int | BaseException]:
        with self.lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        self.threads.add(threading.current_thread().name)
        self.batches.append(list(items))
        self.started.set()
        try:
            if self.hold is not None:
                while not self.hold.wait(0.005):
                    if stop.is_set():
                        self.saw_stop.set()
                        raise EngineFailure("stopped")
            return [item * 2 for item in items]
        finally:
            with self.lock:
                self.running -= 1


async def test_concurrent_calls_share_one_batch_and_each_gets_its_own_result() -> None:
    engine = Engine()
    batcher = Batcher(engine, BatchLimits(window=0.05, max_size=32))
    results = await asyncio.gather(*(batcher.submit(i) for i in range(10)))
    assert results == [i * 2 for i in range(10)]
    assert engine.batches == [list(range(10))]
    assert batcher.batches == 1
    assert batcher.items == 10


async def test_a_batch_never_exceeds_max_size() -> None:
    engine = Engine()
    batcher = Batcher(engine, BatchLimits(window=0.05, max_size=4))
    results = await asyncio.gather(*(batcher.submit(i) for i in range(10)))
    assert results == [i * 2 for i in range(10)]
    assert [len(b) for b in engine.batches] == [4, 4, 2]
    assert sorted(i for b in engine.batches for i in b) == list(range(10))


async def test_a_full_batch_runs_without_waiting_for_the_window() -> None:
    engine = Engine()
    batcher = Batcher(engine, BatchLimits(window=30.0, max_size=3))
    started = time.monotonic()
    results = await asyncio.wait_for(asyncio.gather(*(batcher.submit(i) for i in range(3))), 10)
    assert results == [0, 2, 4]
    assert time.monotonic() - started < 5  # far below the 30 s window


async def test_a_lone_call_with_no_company_runs_without_waiting_for_the_window() -> None:
    engine = Engine()
    batcher = Batcher(engine, BatchLimits(window=30.0, max_size=32))
    # One caller sending its texts one after another (core's way for one request's inputs).
    for i in range(3):
        assert await asyncio.wait_for(batcher.submit(i), 5) == i * 2  # far below the 30 s window
    assert engine.batches == [[0], [1], [2]]


async def test_a_lone_call_soon_after_a_batch_with_company_waits_for_company() -> None:
    engine = Engine()
    batcher = Batcher(engine, BatchLimits(window=0.2, max_size=32))
    assert list(await asyncio.gather(batcher.submit(0), batcher.submit(1))) == [0, 2]
    started = time.monotonic()
    lone = asyncio.ensure_future(batcher.submit(2))
    await asyncio.sleep(0.05)  # within the window: this call joins the lone one's batch
    assert list(await asyncio.gather(lone, batcher.submit(3))) == [4, 6]
    assert time.monotonic() - started >= 0.2
    assert engine.batches == [[0, 1], [2, 3]]


async def test_two_callers_one_text_after_another_end_up_batched_together() -> None:
    batches: list[list[int]] = []

    def slow(items: list[int], stop: threading.Event) -> list[int]:
        batches.append(list(items))
        time.sleep(0.02)  # an engine pass long enough for the other caller's call to land meanwhile
        return [item * 2 for item in items]

    batcher = Batcher(slow, BatchLimits(window=0.05, max_size=32))

    async def caller(first: int) -> None:
        for i in range(first, first + 20, 2):
            assert await batcher.submit(i) == i * 2

    first = asyncio.ensure_future(caller(0))
    while not batches:  # the first caller's first call is in the engine, alone
        await asyncio.sleep(0.001)
    await asyncio.gather(first, caller(1))
    # A call that arrived while a batch ran is a sign of company: from then on they share batches,
    # rather than taking turns alone.
    assert [len(b) for b in batches[1:-1]] == [2] * (len(batches) - 2), batches


async def test_a_batch_stays_open_while_calls_keep_coming() -> None:
    engine = Engine()
    batcher = Batcher(engine, BatchLimits(window=0.2, max_size=32))
    await asyncio.gather(batcher.submit(-2), batcher.submit(-1))  # concurrent callers were seen
    engine.batches.clear()
    tasks = []
    for i in range(3):  # 0.3 s in all: past one window from the first, but never 0.2 s without a call
        tasks.append(asyncio.ensure_future(batcher.submit(i)))
        await asyncio.sleep(0.1)
    assert await asyncio.gather(*tasks) == [0, 2, 4]
    assert engine.batches == [[0, 1, 2]]


async def test_a_steady_trickle_cannot_hold_a_batch_open_forever() -> None:
    engine = Engine()
    batcher = Batcher(engine, BatchLimits(window=0.05, max_size=32))
    tasks = []
    for i in range(12):  # one call every 30 ms for 0.36 s: longer than MAX_WINDOWS windows
        tasks.append(asyncio.ensure_future(batcher.submit(i)))
        await asyncio.sleep(0.03)
    assert await asyncio.gather(*tasks) == [i * 2 for i in range(12)]
    assert len(engine.batches) > 1
    assert sorted(i for b in engine.batches for i in b) == list(range(12))


async def test_calls_arriving_while_a_batch_runs_go_in_the_next_one() -> None:
    hold = threading.Event()
    engine = Engine(hold)
    batcher = Batcher(engine, BatchLimits(window=0.0, max_size=32))
    first = asyncio.ensure_future(batcher.submit(1))
    assert await asyncio.to_thread(engine.started.wait, 5)
    later = [asyncio.ensure_future(batcher.submit(i)) for i in (2, 3, 4)]
    await asyncio.sleep(0.05)  # the later calls queue behind the running batch
    assert len(engine.batches) == 1
    hold.set()
    assert await first == 2
    assert await asyncio.gather(*later) == [4, 6, 8]
    assert engine.batches == [[1], [2, 3, 4]]


async def _queued_behind_a_running_batch(
    batcher: Batcher[int, int], engine: Engine, items: list[int]
) -> list[int]:
    """Results for `items`, submitted in order while a batch of [0] holds the engine."""
    assert engine.hold is not None
    first = asyncio.ensure_future(batcher.submit(0))
    assert await asyncio.to_thread(engine.started.wait, 5)
    queued = []
    for item in items:
        queued.append(asyncio.ensure_future(batcher.submit(item)))
        await asyncio.sleep(0)  # in arrival order
    await asyncio.sleep(0.05)  # all queue behind the running batch
    engine.hold.set()
    assert await first == 0
    return list(await asyncio.gather(*queued))


async def test_a_costly_item_runs_in_a_batch_of_its_own_and_small_ones_go_first() -> None:
    engine = Engine(threading.Event())
    batcher = Batcher(engine, BatchLimits(window=0.0, max_size=32), cost=float, max_cost=10)
    results = await _queued_behind_a_running_batch(batcher, engine, [1, 100, 2, 3])
    assert results == [2, 200, 4, 6]
    # The small calls that came with it did not wait in its batch: they ran before it, together.
    assert engine.batches == [[0], [1, 2, 3], [100]]


async def test_the_longest_waiting_call_starts_the_next_batch_whatever_its_cost() -> None:
    engine = Engine(threading.Event())
    batcher = Batcher(engine, BatchLimits(window=0.0, max_size=32), cost=float, max_cost=10)
    results = await _queued_behind_a_running_batch(batcher, engine, [100, 4, 5, 6])
    assert results == [200, 8, 10, 12]
    # Nothing waits forever behind later arrivals; what fits beside it (nothing here) joins it.
    assert engine.batches == [[0], [100], [4, 5], [6]]


def test_a_batch_cost_bound_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_cost must be > 0"):
        Batcher(Engine(), max_cost=0)


async def test_batches_run_one_at_a_time_off_the_event_loop() -> None:
    engine = Engine()
    batcher = Batcher(engine, BatchLimits(window=0.0, max_size=2), name="probe")
    await asyncio.gather(*(batcher.submit(i) for i in range(9)))
    assert engine.most_at_once == 1
    assert threading.current_thread().name not in engine.threads
    assert all(name.startswith("probe") for name in engine.threads)


async def test_an_engine_error_reaches_every_caller_of_that_batch_and_the_next_batch_runs() -> None:
    calls = 0

    def flaky(items: list[int], stop: threading.Event) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise EngineFailure("out of memory in the engine")
        return [i + 100 for i in items]

    batcher = Batcher(flaky, BatchLimits(window=0.05, max_size=32))
    outcomes = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
    assert len(outcomes) == 3
    for outcome in outcomes:
        assert isinstance(outcome, EngineFailure)
        assert "out of memory" in str(outcome)
    assert await batcher.submit(1) == 101


async def test_an_exception_as_a_result_is_raised_to_that_caller_alone() -> None:
    def picky(items: list[int], stop: threading.Event) -> list[int | BaseException]:
        return [BadInput(f"{i} is odd") if i % 2 else i for i in items]

    batcher = Batcher(picky, BatchLimits(window=0.05, max_size=32))
    outcomes = await asyncio.gather(*(batcher.submit(i) for i in range(4)), return_exceptions=True)
    assert outcomes[0] == 0
    assert outcomes[2] == 2
    assert isinstance(outcomes[1], BadInput)
    assert "1 is odd" in str(outcomes[1])
    assert isinstance(outcomes[3], BadInput)


async def test_a_wrong_number_of_results_fails_the_batch_clearly() -> None:
    def short(items: list[int], stop: threading.Event) -> list[int]:
        return items[:-1]

    batcher = Batcher(short, BatchLimits(window=0.05, max_size=32))
    outcomes = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
    for outcome in outcomes:
        assert isinstance(outcome, EngineFailure)
        assert "2 results for a batch of 3" in str(outcome)


async def test_a_caller_cancelled_before_its_batch_leaves_it() -> None:
    engine = Engine()
    batcher = Batcher(engine, BatchLimits(window=0.1, max_size=32))
    tasks = [asyncio.ensure_future(batcher.submit(i)) for i in range(4)]
    await asyncio.sleep(0)  # all four are queued, inside the window
    tasks[1].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[1], asyncio.CancelledError)
    assert [results[0], results[2], results[3]] == [0, 4, 6]
    assert engine.batches == [[0, 2, 3]]


async def test_a_caller_whose_stop_flag_is_set_gets_cancelled_and_is_not_run() -> None:
    engine = Engine()
    batcher = Batcher(engine, BatchLimits(window=0.05, max_size=32))
    stop = threading.Event()
    stopped = asyncio.ensure_future(batcher.submit(7, stop=stop))
    kept = asyncio.ensure_future(batcher.submit(8))
    stop.set()  # e.g. the drain's grace period ended for that call
    with pytest.raises(Cancelled):
        await stopped
    assert await kept == 16
    assert engine.batches == [[8]]


async def test_a_caller_cancelled_mid_batch_waits_for_the_batch_and_others_get_answers() -> None:
    hold = threading.Event()
    engine = Engine(hold)
    batcher = Batcher(engine, BatchLimits(window=0.05, max_size=32))
    leaving = asyncio.ensure_future(batcher.submit(1))
    staying = asyncio.ensure_future(batcher.submit(2))
    assert await asyncio.to_thread(engine.started.wait, 5)
    leaving.cancel()
    await asyncio.sleep(0.05)
    assert not leaving.done()  # like Call.run: it leaves only once the work it shares has stopped
    hold.set()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert await staying == 4
    assert not engine.saw_stop.is_set()  # one caller stayed: the batch ran to the end


async def test_when_every_caller_of_a_running_batch_leaves_the_engine_is_told_to_stop() -> None:
    engine = Engine(threading.Event())  # never released: only the stop event ends the batch
    batcher = Batcher(engine, BatchLimits(window=0.05, max_size=32))
    tasks = [asyncio.ensure_future(batcher.submit(i)) for i in range(3)]
    assert await asyncio.to_thread(engine.started.wait, 5)
    for task in tasks:
        task.cancel()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    assert engine.saw_stop.is_set()
    # The batcher still serves: a new call gets a new batch (the held engine is released for it).
    assert engine.hold is not None
    engine.hold.set()
    assert await asyncio.wait_for(batcher.submit(5), 5) == 10


async def test_close_fails_queued_callers_and_refuses_new_ones() -> None:
    engine = Engine()
    batcher = Batcher(engine, BatchLimits(window=10.0, max_size=32))
    queued = asyncio.ensure_future(batcher.submit(1))
    await asyncio.sleep(0)
    await asyncio.to_thread(batcher.close)  # the runtime unloads in a worker thread
    with pytest.raises(EngineFailure, match="unloaded"):
        await asyncio.wait_for(queued, 5)
    with pytest.raises(EngineFailure, match="unloaded"):
        await batcher.submit(2)
    assert engine.batches == []


def test_limits_come_from_settings_unless_a_model_option_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALFLEET_BATCH_WINDOW_MS", "7.5")
    monkeypatch.setenv("LOCALFLEET_BATCH_MAX_SIZE", "12")
    assert BatchLimits.from_settings() == BatchLimits(window=0.0075, max_size=12)
    assert BatchLimits.from_settings(window_ms=0, max_size=3) == BatchLimits(window=0.0, max_size=3)
    with pytest.raises(ValueError, match="at least 1"):
        BatchLimits(max_size=0)
