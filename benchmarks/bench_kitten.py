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
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterator
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
RATE = 24000


def bare(folder: Path) -> Callable[[str], Iterator[bytes]]:
    from localfleet_kitten_tts import engine

    model = engine.load(folder)
    return lambda text: model.pcm(text, model.default_voice, 1.0, True)


async def wait_loaded(addr: str, folder: Path) -> None:
    async with connect(addr) as client:
        result = await client.backend.LoadModel(pb.ModelOptions(Model=str(folder)), timeout=300)
        if not result.success:
            raise SystemExit(f"LoadModel {folder} failed: {result.message}")


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
            streamed = await time_stream(process.addr, pb.TTSRequest(text=TEXT))
            await asyncio.sleep(SETTLE)
            here = time_chunks(synthesize(TEXT))
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
    from tests.kitten_tts.models import build

    with tempfile.TemporaryDirectory() as scratch:
        asyncio.run(bench(build(Path(scratch) / "kitten-tts-fake"), args.runs))


if __name__ == "__main__":
    main()
