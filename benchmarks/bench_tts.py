"""TTS time to first audio chunk through TTSStream, beside the bare engine's first chunk in the same run.

    python benchmarks/bench_tts.py [--runs 10] [--backends piper,kokoro]

For each backend on its bundled model (piper: en_US-joe-medium; kokoro: Kokoro-82M int8 speaking
English), a `localfleet serve` process is started and TTSStream is timed from the call to the first
`Reply.audio` (client side, fresh connection each call as LocalAI core makes it), then the whole stream.
The same text goes through the engine in this process (the engine module's generator, no gRPC) for
its first chunk and its whole synthesis. Prints medians and p90 over --runs, after two warm-up runs,
and the real-time factor (synthesis time / audio length).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from localfleet.client import connect
from localfleet.proto import backend_pb2 as pb
from localfleet.testing import spawn

TEXT = (
    "The quick brown fox jumps over the lazy dog. "
    "Every sentence is sent as soon as it is ready. "
    "The weather today is sunny and warm, with a light breeze from the west."
)
WARMUP = 2
SETTLE = 0.5  # seconds between measurements


@dataclass
class Timing:
    first: float
    total: float
    audio_bytes: int


@dataclass(frozen=True)
class Subject:
    backend: str
    model: str
    sample_rate: int
    bare: Callable[[], Callable[[str], Iterator[bytes]]]  # loads the engine, returns text -> PCM chunks


def _piper_bare() -> Callable[[str], Iterator[bytes]]:
    from localfleet_piper import engine
    from localfleet_piper.voices import bundled

    [found] = [v for v in bundled() if v.name == "en_US-joe-medium"]
    voice = engine.load(found.path, found.config)
    tuning = engine.Tuning()
    return lambda text: voice.pcm(text, None, tuning)


def _kokoro_bare() -> Callable[[str], Iterator[bytes]]:
    from localfleet_kokoro import engine

    model = engine.load(*engine.bundled())
    return lambda text: model.pcm(text, model.voices[0], "en-us", 1.0)


SUBJECTS = {
    "piper": Subject("piper", "en_US-joe-medium.onnx", 22050, _piper_bare),
    "kokoro": Subject("kokoro", "kokoro-v1.0.int8.onnx", 24000, _kokoro_bare),
}


def time_bare(synthesize: Callable[[str], Iterator[bytes]]) -> Timing:
    started = time.perf_counter()
    first = 0.0
    size = 0
    for chunk in synthesize(TEXT):
        if not size:
            first = time.perf_counter() - started
        size += len(chunk)
    return Timing(first, time.perf_counter() - started, size)


async def time_stream(addr: str) -> Timing:
    started = time.perf_counter()
    first = 0.0
    size = 0
    async with connect(addr) as client, client.backend.TTSStream.open() as stream:
        await stream.send_message(pb.TTSRequest(text=TEXT), end=True)
        async for reply in stream:
            if reply.audio and not size:
                first = time.perf_counter() - started
            size += len(reply.audio)
    return Timing(first, time.perf_counter() - started, size)


async def wait_loaded(addr: str, model: str) -> None:
    async with connect(addr) as client:
        result = await client.backend.LoadModel(pb.ModelOptions(Model=model), timeout=300)
        if not result.success:
            raise SystemExit(f"LoadModel {model} failed: {result.message}")


def summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return f"p50 {statistics.median(samples) * 1000:7.1f} ms  p90 {p90 * 1000:7.1f} ms"


def report(subject: Subject, grpc: list[Timing], bare: list[Timing]) -> None:
    seconds = statistics.median(t.audio_bytes for t in bare) / 2 / subject.sample_rate
    first_grpc = statistics.median(t.first for t in grpc)
    first_bare = statistics.median(t.first for t in bare)
    total_grpc = statistics.median(t.total for t in grpc)
    total_bare = statistics.median(t.total for t in bare)
    print(f"{subject.backend} ({subject.model}), {seconds:.2f} s of speech in 3 sentences:")
    print(f"  first chunk, TTSStream via gRPC:   {summary([t.first for t in grpc])}")
    print(f"  first chunk, bare engine:          {summary([t.first for t in bare])}")
    extra = (first_grpc - first_bare) * 1000
    print(f"  first chunk gRPC / bare:           {first_grpc / first_bare:.2f}x (+{extra:.1f} ms)")
    ratio = total_grpc / total_bare
    whole = f"{total_grpc * 1000:.0f} / {total_bare * 1000:.0f} ms = {ratio:.2f}x"
    print(f"  whole stream, gRPC / bare:         {whole}")
    print(f"  real-time factor, gRPC / bare:     {total_grpc / seconds:.3f} / {total_bare / seconds:.3f}")


async def bench(subject: Subject, runs: int) -> None:
    synthesize = subject.bare()
    with spawn(subject.backend, timeout=60) as process:
        await wait_loaded(process.addr, subject.model)
        grpc: list[Timing] = []
        bare: list[Timing] = []
        for run in range(WARMUP + runs):
            # Interleaved, so both see the same machine load; a pause before each lets the other
            # side's ONNX Runtime threads stop spinning first.
            await asyncio.sleep(SETTLE)
            streamed = await time_stream(process.addr)
            await asyncio.sleep(SETTLE)
            local = time_bare(synthesize)
            if run >= WARMUP:
                grpc.append(streamed)
                bare.append(local)
    report(subject, grpc, bare)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--backends", default="piper,kokoro")
    args: Any = parser.parse_args(argv)
    for name in args.backends.split(","):
        asyncio.run(bench(SUBJECTS[name], args.runs))


if __name__ == "__main__":
    main()
