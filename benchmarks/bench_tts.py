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
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # benchmarks.speech_timing, tests/

from benchmarks.speech_timing import Timing, summary, time_chunks, time_stream  # noqa: E402 (after the path above)
from localfleet.client import connect  # noqa: E402
from localfleet.proto import backend_pb2 as pb  # noqa: E402
from localfleet.testing import spawn  # noqa: E402

TEXT = (
    "The quick brown fox jumps over the lazy dog. "
    "Every sentence is sent as soon as it is ready. "
    "The weather today is sunny and warm, with a light breeze from the west."
)
WARMUP = 2
SETTLE = 0.5  # seconds between measurements


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


async def wait_loaded(addr: str, model: str) -> None:
    async with connect(addr) as client:
        result = await client.backend.LoadModel(pb.ModelOptions(Model=model), timeout=300)
        if not result.success:
            raise SystemExit(f"LoadModel {model} failed: {result.message}")


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
            streamed = await time_stream(process.addr, pb.TTSRequest(text=TEXT))
            await asyncio.sleep(SETTLE)
            local = time_chunks(synthesize(TEXT))
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
