"""Group limits: RPCs a backend holds to fewer at once than its concurrency, admitted by the runtime."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, ClassVar

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from pydantic import BaseModel, Field

from localfleet.admission import Limit
from localfleet.backend import Backend, ModelRef
from localfleet.call import Call
from localfleet.options import BackendOptions
from localfleet.proto import backend_pb2 as pb
from localfleet.runtime import Runtime
from localfleet.service import BackendService
from localfleet.settings import Settings
from localfleet.testing import Served, serving
from tests.runtime.conftest import load

pytestmark = pytest.mark.asyncio


class GatedOptions(BackendOptions):
    generations: int = Field(1, ge=1)


class Gated(Backend):
    """Predict and PredictStream share the `generations` limit; each runs until the test lets it finish."""

    name = "gated"
    Options = GatedOptions
    default_concurrency = 2
    limit_groups: ClassVar[Mapping[str, str]] = {"Predict": "generations", "PredictStream": "generations"}

    def __init__(self) -> None:
        self.entered: asyncio.Queue[str] = asyncio.Queue()  # prompts, as each generation starts
        self.finish: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.running = 0
        self.most = 0  # the most generations that ever ran at once

    def load(self, model: ModelRef, options: BaseModel, request: pb.ModelOptions) -> str:
        return "gated"

    async def _generate(self, prompt: str) -> None:
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            self.entered.put_nowait(prompt)
            await self.finish[prompt].wait()
        finally:
            self.running -= 1

    async def Predict(self, request: pb.PredictOptions, call: Call) -> pb.Reply:
        await self._generate(request.Prompt)
        return pb.Reply(message=request.Prompt.encode())

    async def PredictStream(self, request: pb.PredictOptions, call: Call) -> AsyncIterator[pb.Reply]:
        await self._generate(request.Prompt)
        yield pb.Reply(message=request.Prompt.encode())

    async def Embedding(self, request: pb.PredictOptions, call: Call) -> pb.EmbeddingResult:
        return pb.EmbeddingResult(embeddings=[1.0], dim=1)


async def until(condition: Callable[[], bool]) -> None:
    """Wait for a state the server reaches on its own (a call queued or gone), checked on every turn."""
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0.001)


def queue_depth(served: Served) -> float | None:
    value: float | None = served.runtime.metrics.registry.get_sample_value("localfleet_queue_depth")
    return value


def predict(served: Served, prompt: str) -> asyncio.Task[Any]:
    return asyncio.create_task(served.client.backend.Predict(pb.PredictOptions(Prompt=prompt)))


async def test_a_group_limit_of_one_runs_generations_one_at_a_time_beside_other_rpcs() -> None:
    gated = Gated()
    async with serving(gated) as served:  # two slots: one generation running leaves one free
        await load(served)
        first = predict(served, "a")
        assert await gated.entered.get() == "a"
        second = predict(served, "b")
        await until(lambda: served.runtime.admission.waiting == 1)
        third = asyncio.create_task(served.client.backend.PredictStream(pb.PredictOptions(Prompt="c")))
        await until(lambda: served.runtime.admission.waiting == 2)
        # The waiting generations hold no slot: an embedding is served at once beside the running one.
        assert served.runtime.admission.running == 1
        result = await asyncio.wait_for(served.client.backend.Embedding(pb.PredictOptions(Embeddings="e")), 5)
        assert list(result.embeddings) == [1.0]
        assert gated.entered.empty()
        for prompt, following in (("a", "b"), ("b", "c")):  # in arrival order, one at a time
            gated.finish[prompt].set()
            assert await gated.entered.get() == following
        gated.finish["c"].set()
        assert (await first).message == b"a"
        assert (await second).message == b"b"
        assert [r.message for r in await third] == [b"c"]
        assert gated.most == 1
        assert served.runtime.admission.waiting == 0
        assert queue_depth(served) == 0


async def test_queued_group_calls_count_toward_the_queue_bound() -> None:
    gated = Gated()
    async with serving(gated, queue_size=1) as served:
        await load(served)
        first = predict(served, "a")
        assert await gated.entered.get() == "a"
        second = predict(served, "b")
        await until(lambda: served.runtime.admission.waiting == 1)
        assert queue_depth(served) == 1
        with pytest.raises(GRPCError) as err:
            await served.client.backend.Predict(pb.PredictOptions(Prompt="c"))
        assert err.value.status == Status.RESOURCE_EXHAUSTED
        message = err.value.message or ""
        assert "queue full" in message
        assert "LoadModel option generations" in message
        assert "LOCALFLEET_QUEUE_SIZE" in message
        # A call that needs no wait is not refused: the queue bound is for waiting.
        await asyncio.wait_for(served.client.backend.Embedding(pb.PredictOptions(Embeddings="e")), 5)
        gated.finish["a"].set()
        gated.finish["b"].set()
        assert (await first).message == b"a"
        assert (await second).message == b"b"
        assert "c" not in gated.finish


async def test_a_cancelled_queued_call_leaves_the_queue() -> None:
    gated = Gated()
    async with serving(gated) as served:
        await load(served)
        first = predict(served, "a")
        assert await gated.entered.get() == "a"
        gone = predict(served, "b")
        await until(lambda: served.runtime.admission.waiting == 1)
        gone.cancel()  # the client goes away; the server's handler is cancelled while it waits
        with pytest.raises(asyncio.CancelledError):
            await gone
        await until(lambda: served.runtime.admission.waiting == 0)
        assert queue_depth(served) == 0
        after = predict(served, "c")
        await until(lambda: served.runtime.admission.waiting == 1)
        gated.finish["a"].set()
        assert await gated.entered.get() == "c"  # next in line; the one that left never runs
        gated.finish["c"].set()
        assert (await first).message == b"a"
        assert (await after).message == b"c"
        assert "b" not in gated.finish
        group = served.runtime.admission.groups["generations"]
        await until(lambda: group.held == 0 and served.runtime.admission.running == 0)


async def test_load_model_options_set_the_group_limit() -> None:
    gated = Gated()
    async with serving(gated, concurrency=4) as served:
        assert (await load(served, Options=["generations:2"])).success
        calls = [predict(served, p) for p in "abc"]
        assert {await gated.entered.get(), await gated.entered.get()} == {"a", "b"}
        await until(lambda: served.runtime.admission.waiting == 1)
        gated.finish["a"].set()
        assert await gated.entered.get() == "c"
        gated.finish["b"].set()
        gated.finish["c"].set()
        await asyncio.gather(*calls)
        assert gated.most == 2

        assert (await load(served)).success  # back to the default of one
        gated.finish.clear()
        calls = [predict(served, p) for p in "de"]
        assert await gated.entered.get() == "d"
        await until(lambda: served.runtime.admission.waiting == 1)
        assert gated.running == 1
        gated.finish["d"].set()
        assert await gated.entered.get() == "e"
        gated.finish["e"].set()
        await asyncio.gather(*calls)


class BadLimits(Gated):
    def group_limits(self, options: BaseModel) -> Mapping[str, int]:
        return {"generations": 0}


async def test_a_limit_below_one_fails_load_model() -> None:
    async with serving(BadLimits()) as served:
        result = await load(served)
        assert not result.success
        assert "the generations limit must be a whole number >= 1, got 0" in result.message


class Stray(Gated):
    limit_groups: ClassVar[Mapping[str, str]] = {"Predict": "generations", "TTS": "generations"}


async def test_a_group_for_an_rpc_the_backend_lacks_is_an_error_at_start() -> None:
    with pytest.raises(TypeError, match=r"Stray.limit_groups names RPCs it does not serve: \['TTS'\]"):
        BackendService(Runtime(Stray(), Settings()))


async def test_raising_a_limit_lets_its_waiters_in_at_once() -> None:
    limit = Limit(1)
    await limit.acquire()
    waiters = [asyncio.create_task(limit.acquire()) for _ in range(3)]
    await until(lambda: limit.full and all(not w.done() for w in waiters))
    limit.resize(3)
    await asyncio.wait_for(asyncio.gather(*waiters[:2]), 5)
    assert not waiters[2].done()
    assert limit.held == 3
    limit.release()
    await asyncio.wait_for(waiters[2], 5)
    assert limit.held == 3


async def test_a_turn_handed_to_a_caller_that_just_left_goes_to_the_next() -> None:
    limit = Limit(1)
    await limit.acquire()
    leaving, next_in_line = (asyncio.create_task(limit.acquire()) for _ in range(2))
    await asyncio.sleep(0)  # both are waiting for their turn
    limit.release()  # hands the turn to `leaving`...
    leaving.cancel()  # ...which is cancelled before it resumes
    with pytest.raises(asyncio.CancelledError):
        await leaving
    await asyncio.wait_for(next_in_line, 5)
    assert limit.held == 1


async def test_a_lowered_limit_holds_for_calls_given_turns_while_the_load_waited() -> None:
    gated = Gated()
    async with serving(gated, concurrency=4) as served:
        assert (await load(served, Options=["generations:3"])).success
        running = [predict(served, p) for p in "abc"]
        for _ in range(3):
            await gated.entered.get()
        queued = [predict(served, p) for p in "def"]
        await until(lambda: served.runtime.admission.waiting == 3)
        reload = asyncio.ensure_future(load(served, Options=["generations:1"]))
        await until(lambda: served.runtime.gate._writers_waiting == 1)
        # d, e and f take turns under the old limit of 3, then wait for the gate behind the load.
        for p in "abc":
            gated.finish[p].set()
        await asyncio.gather(*running)
        gated.most = 0
        assert (await reload).success
        for _ in range(3):  # each finishes before the next may start
            gated.finish[await asyncio.wait_for(gated.entered.get(), 5)].set()
        await asyncio.gather(*queued)
        assert gated.most == 1  # one at a time on the new model, as it was loaded with
        assert served.runtime.admission.groups["generations"].held == 0
