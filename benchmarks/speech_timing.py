"""What the TTS benchmarks share: one timed TTSStream call, one timed bare synthesis, a p50/p90 line.

A TTSStream call opens a fresh connection, as LocalAI core does for each request, and is timed from the
call to the first `Reply.audio` (time to first audio) and to the stream's end.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass

from localfleet.client import connect
from localfleet.proto import backend_pb2 as pb


@dataclass
class Timing:
    first: float  # seconds to the first audio
    total: float  # seconds to the last
    audio_bytes: int  # s16le PCM


def time_chunks(chunks: Iterable[bytes]) -> Timing:
    """The bare engine's side: consume its PCM chunks as they come."""
    started = time.perf_counter()
    first = 0.0
    size = 0
    for chunk in chunks:
        if not size:
            first = time.perf_counter() - started
        size += len(chunk)
    return Timing(first, time.perf_counter() - started, size)


async def time_stream(addr: str, request: pb.TTSRequest) -> Timing:
    started = time.perf_counter()
    first = 0.0
    size = 0
    async with connect(addr) as client, client.backend.TTSStream.open() as stream:
        await stream.send_message(request, end=True)
        async for reply in stream:
            if reply.audio and not size:
                first = time.perf_counter() - started
            size += len(reply.audio)
    return Timing(first, time.perf_counter() - started, size)


def summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return f"p50 {statistics.median(samples) * 1000:8.1f} ms  p90 {p90 * 1000:8.1f} ms"
