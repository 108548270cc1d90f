"""kitten-tts: time to first audio through TTSStream and the real-time factor, beside the bare engine in
the same run (modeled on bench_tts.py).

    python benchmarks/bench_kitten.py [--runs 10] [--model FOLDER]

FOLDER is a KittenTTS model folder (config.json, ONNX model, voices.npz, e.g. kitten-tts-nano-0.8
downloaded from Hugging Face). Without it the tests' KittenTTS-shaped model (tests/kitten_tts/models.py,
seeded noise with Kitten's input/output contract; needs the `onnx` package of the test extra) is built
in a temporary folder: it measures the serving path (phonemizer, kittenml, the runtime, gRPC) around a
near-free graph, not a real model's synthesis. A `localfleet serve kitten-tts` process is started and
TTSStream is timed from the call to the first `Reply.audio` (fresh connection each call, as LocalAI core
makes it), then the whole stream; the same text goes through the engine in this process (engine.Model.pcm,
no gRPC). Medians and p90 over --runs after two warm-up runs, and the real-time factor (synthesis time /
audio length).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
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
RATE = 24000


@dataclass
class Timing:
    first: float
    total: float
    audio_bytes: int


def bare(folder: Path) -> Callable[[str], Iterator[bytes]]:
    from localfleet_kitten_tts import engine

    model = engine.load(folder)
    return lambda text: model.pcm(text, model.default_voice, 1.0, True)


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


async def wait_loaded(addr: str, folder: Path) -> None:
    async with connect(addr) as client:
        result = await client.backend.LoadModel(pb.ModelOptions(Model=str(folder)), timeout=300)
        if not result.success:
            raise SystemExit(f"LoadModel {folder} failed: {result.message}")


def summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return f"p50 {statistics.median(samples) * 1000:7.1f} ms  p90 {p90 * 1000:7.1f} ms"


def report(name: str, grpc: list[Timing], local: list[Timing]) -> None:
    seconds = statistics.median(t.audio_bytes for t in local) / 2 / RATE
    first_grpc = statistics.median(t.first for t in grpc)
    first_bare = statistics.median(t.first for t in local)
    total_grpc = statistics.median(t.total for t in grpc)
    total_bare = statistics.median(t.total for t in local)
    print(f"kitten-tts ({name}), {seconds:.2f} s of speech in 3 sentences:")
    print(f"  first chunk, TTSStream via gRPC:   {summary([t.first for t in grpc])}")
    print(f"  first chunk, bare engine:          {summary([t.first for t in local])}")
    extra = (first_grpc - first_bare) * 1000
    print(f"  first chunk gRPC / bare:           {first_grpc / first_bare:.2f}x (+{extra:.1f} ms)")
    ratio = total_grpc / total_bare
    whole = f"{total_grpc * 1000:.0f} / {total_bare * 1000:.0f} ms = {ratio:.2f}x"
    print(f"  whole stream, gRPC / bare:         {whole}")
    print(f"  real-time factor, gRPC / bare:     {total_grpc / seconds:.4f} / {total_bare / seconds:.4f}")


async def bench(folder: Path, runs: int) -> None:
    synthesize = bare(folder)
    with spawn("kitten-tts", timeout=60) as process:
        await wait_loaded(process.addr, folder)
        grpc: list[Timing] = []
        local: list[Timing] = []
        for run in range(WARMUP + runs):
            # Interleaved, so both see the same machine load; a pause before each lets the other
            # side's ONNX Runtime threads stop spinning first.
            await asyncio.sleep(SETTLE)
            streamed = await time_stream(process.addr)
            await asyncio.sleep(SETTLE)
            here = time_bare(synthesize)
            if run >= WARMUP:
                grpc.append(streamed)
                local.append(here)
    report(folder.name, grpc, local)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--model", type=Path, help="a KittenTTS model folder; default: the tests' fake")
    args: Any = parser.parse_args(argv)
    if args.model is not None:
        asyncio.run(bench(args.model.resolve(), args.runs))
        return
    sys.path.insert(0, os.fspath(Path(__file__).resolve().parents[1]))  # the checkout, for tests/
    from tests.kitten_tts.models import build

    with tempfile.TemporaryDirectory() as scratch:
        asyncio.run(bench(build(Path(scratch) / "kitten-tts-fake"), args.runs))


if __name__ == "__main__":
    main()
