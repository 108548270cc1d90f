"""A large request's memory goes back to the system once it is over, in a real `localfleet serve` process.

A 40 MB Embedding left 4 GB resident before its text was cut to the window; cut, it still left about
50 MiB that glibc kept in its arenas, until the heap is trimmed after it.
"""

from __future__ import annotations

import asyncio
import time

import psutil
import pytest

from localfleet.client import connect
from localfleet.proto import backend_pb2 as pb
from localfleet.settings import MiB
from localfleet.testing import spawn

pytestmark = pytest.mark.asyncio

PROSE = "A man is eating a piece of bread. The girl is carrying a baby. "
#: resident memory a large request may leave behind once it is over
RESIDUE = 24 * MiB


async def settled_growth(process: psutil.Process, before: int, seconds: float) -> int:
    """RSS above `before`, once it is within RESIDUE or `seconds` have passed (the trim runs a moment
    after the request, in a worker thread: there is no event to wait for)."""
    deadline = time.monotonic() + seconds
    while (grown := process.memory_info().rss - before) >= RESIDUE and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    return grown


async def test_resident_memory_comes_back_after_a_huge_embedding(minilm: str) -> None:
    with spawn("transformers", timeout=60) as proc:
        process = psutil.Process(proc.popen.pid)
        async with connect(proc.addr) as client:
            loaded = await client.backend.LoadModel(pb.ModelOptions(Model=minilm), timeout=120)
            assert loaded.success, loaded.message
            for _ in range(3):  # the usual path has run: what it keeps is not the large request's
                await client.backend.Embedding(pb.PredictOptions(Embeddings=PROSE * 40))
            before = process.memory_info().rss
            huge = pb.PredictOptions(Embeddings=PROSE * (40 * MiB // len(PROSE)))
            assert (await client.backend.Embedding(huge, timeout=60)).tokens == 256
            del huge
            grown = await settled_growth(process, before, 10)
        assert grown < RESIDUE, f"{grown / MiB:.0f} MiB still resident after a 40 MiB request"
