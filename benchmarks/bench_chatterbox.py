"""chatterbox: time to first audio through TTSStream and the real-time factor, beside the bare engine in
the same run.

    python benchmarks/bench_chatterbox.py [--runs 3] [--model FOLDER] [--tokens N] [--flow-steps N]

FOLDER is a Chatterbox checkpoint folder (ResembleAI/chatterbox from Hugging Face). Without it the tests'
full-size random checkpoint (tests/chatterbox/models.py, built once into the test cache: 3.2 GB, about
1.5 minutes) is used, whose T3 never says stop, so every sentence runs to the speech-token cap (--tokens,
default 4 there: 0.16 s of audio; the checkpoint's own stop ends a real one's sentences). A `localfleet
serve chatterbox` process loads the model with a fixed seed, and TTSStream is timed from the call to the
first `Reply.audio` (a fresh connection each call, as LocalAI core makes it), then the whole stream; the
same text, seed and options go through the engine in this process (engine.Model.pcm: chatterbox's T3,
S3Gen and watermark, no gRPC), so both make the same tokens. Runs alternate; medians over --runs after one
warm-up run each, and the real-time factor (synthesis time / audio length). Two copies of the model are
in memory at once (about 7 GB each on CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # benchmarks.speech_timing, tests/

from benchmarks.speech_timing import Timing, time_chunks, time_stream  # noqa: E402 (after the path above)
from localfleet.client import connect  # noqa: E402
from localfleet.proto import backend_pb2 as pb  # noqa: E402
from localfleet.testing import spawn  # noqa: E402

TEXT = "The quick brown fox jumps over the lazy dog. Every sentence is sent as soon as it is ready."
SENTENCES = 2
WARMUP = 1
SEED = 7
RATE = 24000


def options(tokens: int, flow_steps: int) -> list[str]:
    return [f"seed:{SEED}", f"max_speech_tokens:{tokens}", f"flow_steps:{flow_steps}"]


def bare(folder: Path, tokens: int, flow_steps: int, threads: int) -> Callable[[str], Iterator[bytes]]:
    with warnings.catch_warnings():  # resemble-perth's import warns that pkg_resources is deprecated
        warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)
        from localfleet_chatterbox import engine

    model = engine.load(folder, threads=threads)
    voice = model.builtin
    assert voice is not None, f"{folder} has no conds.pt"
    settings = engine.Settings(max_speech_tokens=tokens, flow_steps=flow_steps, seed=SEED)
    return lambda text: model.pcm(text, voice, settings)


async def load(addr: str, folder: Path, extra: list[str], threads: int) -> None:
    async with connect(addr) as client:
        request = pb.ModelOptions(Model=str(folder), Options=extra, Threads=threads)
        result = await client.backend.LoadModel(request, timeout=900)
        if not result.success:
            raise SystemExit(f"LoadModel {folder} failed: {result.message}")


def report(name: str, grpc: list[Timing], local: list[Timing]) -> None:
    if [t.audio_bytes for t in grpc] != [t.audio_bytes for t in local]:
        print("  (warning: the two sides made different amounts of audio)")
    seconds = statistics.median(t.audio_bytes for t in local) / 2 / RATE
    first_grpc = statistics.median(t.first for t in grpc)
    first_bare = statistics.median(t.first for t in local)
    total_grpc = statistics.median(t.total for t in grpc)
    total_bare = statistics.median(t.total for t in local)
    print(f"chatterbox ({name}), {seconds:.2f} s of speech in {SENTENCES} sentences, {len(grpc)} runs:")
    print(f"  first chunk, TTSStream via gRPC:   {first_grpc:8.2f} s")
    print(f"  first chunk, bare engine:          {first_bare:8.2f} s")
    print(f"  first chunk bare / gRPC:           {first_bare / first_grpc:.3f} (speed relative to bare)")
    print(f"  whole stream bare / gRPC:          {total_bare / total_grpc:.3f}")
    print(f"  real-time factor, gRPC / bare:     {total_grpc / seconds:.2f} / {total_bare / seconds:.2f}")


async def bench(folder: Path, runs: int, tokens: int, flow_steps: int, threads: int) -> None:
    synthesize = bare(folder, tokens, flow_steps, threads)
    with spawn("chatterbox", timeout=120) as process:
        await load(process.addr, folder, options(tokens, flow_steps), threads)
        grpc: list[Timing] = []
        local: list[Timing] = []
        for run in range(WARMUP + runs):
            # Alternating: both sides see the same machine load.
            streamed = await time_stream(process.addr, pb.TTSRequest(text=TEXT))
            here = time_chunks(synthesize(TEXT))
            if run >= WARMUP:
                grpc.append(streamed)
                local.append(here)
    report(folder.name, grpc, local)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--model", type=Path, help="a Chatterbox checkpoint folder; default: the tests' random one"
    )
    parser.add_argument(
        "--tokens", type=int, help="speech tokens a sentence at most (default 1000; 4 random)"
    )
    parser.add_argument("--flow-steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="torch threads on each side (0: torch's own)")
    args: Any = parser.parse_args(argv)
    if args.model is not None:
        folder = args.model.resolve()
        tokens = args.tokens or 1000
    else:
        from tests.chatterbox.models import build

        folder, tokens = build(), args.tokens or 4
    asyncio.run(bench(folder, args.runs, tokens, args.flow_steps, args.threads))


if __name__ == "__main__":
    main()
