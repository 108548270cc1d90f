"""bark-cpp: time to first audio through TTSStream and the real-time factor, beside the bare engine
(bark_cpp.Bark in this process, no localfleet) in the same run.

    python benchmarks/bench_bark_cpp.py [--runs 5] [--model FILE] [--tokens N] [--threads N]

FILE is a bark.cpp model (ggml_weights.bin from bark.cpp's convert.py --use-f16). Without it the tests'
model of random weights (tests/bark_cpp/models.py: Bark's vocabularies, one layer of width 16 in each
GPT, a small Encodec) is written to a temporary folder: it measures the serving path (the runtime,
gRPC, the per-sentence pieces) around a cheap engine, so the ratio is an upper bound of the overhead a
real Bark sees. A `localfleet serve bark-cpp` process loads the model with --tokens semantic tokens a
sentence and --threads threads; TTSStream is timed from the call to the first `Reply.audio` (a fresh
connection each call, as LocalAI core makes it), then the whole stream; the bare engine speaks the same
sentences with the same settings. Medians over --runs after one warm-up run, interleaved so both see the
same machine load; speed ratios are bare time / gRPC time (1.00 = as fast as the bare engine).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # benchmarks.speech_timing, tests/

from benchmarks.speech_timing import Timing, time_stream  # noqa: E402 (after the path above)
from localfleet.client import connect  # noqa: E402
from localfleet.proto import backend_pb2 as pb  # noqa: E402
from localfleet.testing import spawn  # noqa: E402

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Every sentence is sent as soon as it is ready.",
    "The weather today is sunny and warm.",
]
WARMUP = 1
RATE = 24000


def time_bare(bark: Any, threads: int) -> Timing:
    """The engine alone: one generation a sentence, as the backend splits this text."""
    started = time.perf_counter()
    first = 0.0
    samples = 0
    for sentence in SENTENCES:
        audio = bark.generate_audio(sentence, n_threads=threads)
        if not samples:
            first = time.perf_counter() - started
        samples += len(audio)
    return Timing(first, time.perf_counter() - started, 2 * samples)


async def load(addr: str, model: Path, tokens: int, threads: int) -> None:
    options = [f"semantic_tokens:{tokens}", f"threads:{threads}"]
    async with connect(addr) as client:
        result = await client.backend.LoadModel(
            pb.ModelOptions(Model=str(model), Options=options), timeout=600
        )
        if not result.success:
            raise SystemExit(f"LoadModel {model} failed: {result.message}")
        print(result.message)


def median(values: list[float]) -> float:
    return statistics.median(values)


def report(model: Path, grpc: list[Timing], bare: list[Timing]) -> None:
    seconds = median([t.audio_bytes for t in bare]) / 2 / RATE
    first_grpc, first_bare = median([t.first for t in grpc]), median([t.first for t in bare])
    total_grpc, total_bare = median([t.total for t in grpc]), median([t.total for t in bare])
    print(
        f"bark-cpp ({model.name}), {seconds:.2f} s of audio in {len(SENTENCES)} sentences, {len(grpc)} runs:"
    )
    print(f"  first audio, TTSStream via gRPC:  {first_grpc * 1000:8.1f} ms")
    print(f"  first audio, bare bark_cpp.Bark:  {first_bare * 1000:8.1f} ms")
    print(f"  first audio speed, bare / gRPC:   {first_bare / first_grpc:.3f}")
    print(f"  whole stream, gRPC / bare:        {total_grpc * 1000:.0f} / {total_bare * 1000:.0f} ms")
    print(f"  real-time factor, gRPC / bare:    {total_grpc / seconds:.4f} / {total_bare / seconds:.4f}")
    print(f"  speed, bare / gRPC:               {total_bare / total_grpc:.3f}")


async def bench(model: Path, runs: int, tokens: int, threads: int) -> None:
    from bark_cpp import Bark  # type: ignore[import-untyped]

    bark = Bark(str(model), n_steps_text_encoder=tokens, seed=0)
    try:
        with spawn("bark-cpp", timeout=60) as process:
            await load(process.addr, model, tokens, threads)
            grpc: list[Timing] = []
            bare: list[Timing] = []
            for run in range(WARMUP + runs):
                streamed = await time_stream(process.addr, pb.TTSRequest(text=" ".join(SENTENCES)))
                here = time_bare(bark, threads)
                if run >= WARMUP:
                    grpc.append(streamed)
                    bare.append(here)
    finally:
        bark.close()
    report(model, grpc, bare)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--model", type=Path, help="a bark.cpp model file; default: the tests' random one")
    parser.add_argument("--tokens", type=int, default=681, help="semantic tokens a sentence (the most)")
    parser.add_argument("--threads", type=int, default=2)
    args: Any = parser.parse_args(argv)
    if args.model is not None:
        asyncio.run(bench(args.model.resolve(), args.runs, args.tokens, args.threads))
        return
    from tests.bark_cpp.models import build

    with tempfile.TemporaryDirectory() as scratch:
        asyncio.run(bench(build(Path(scratch) / "bark-tiny.bin"), args.runs, args.tokens, args.threads))


if __name__ == "__main__":
    main()
