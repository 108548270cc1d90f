"""Call.run keeps a cancelled call's slot until the engine thread has really stopped."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from localfleet.call import Call


async def test_a_second_cancel_does_not_cut_the_wait_for_the_engine_short() -> None:
    release = threading.Event()
    executor = ThreadPoolExecutor(1)
    call = Call("Predict", executor)

    def engine() -> str:
        release.wait(10)  # an engine that checks its stop flag only now and then
        return "done"

    task = asyncio.create_task(call.run(engine))
    await asyncio.sleep(0)  # let the work reach its thread
    task.cancel()  # the deadline
    await asyncio.sleep(0.05)
    task.cancel()  # then the stream reset
    await asyncio.sleep(0.05)
    assert call.stop.is_set()
    assert not task.done(), "the call ended while its engine thread still ran"
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    executor.shutdown()
