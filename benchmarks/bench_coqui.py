"""coqui: time to first audio through TTSStream and the real-time factor, beside coqui-tts's own API
(`TTS.api.TTS(...).tts(text)`) in the same run.

    python benchmarks/bench_coqui.py [--runs 10] [--model FOLDER | --xtts] [--threads N] [--speaker NAME]

FOLDER is a Coqui model folder (config.json and model.pth, e.g. a VITS downloaded with `tts
--list_models`' names). Without it the tests' tiny random VITS (tests/coqui/models.py) is built in a
temporary folder: a small model, so the figures weigh the serving path (the runtime, gRPC, sentence
splitting) against a cheap synthesis. `--xtts` builds the tests' tiny random XTTS instead (its own
decoder's size, one preset voice) and streams with it: there TTSStream sends audio every few GPT steps
while the API returns the whole text at once. A `localfleet serve coqui` process is started and TTSStream is
timed from the call to the first `Reply.audio` (fresh connection each call, as LocalAI core makes it),
then the whole stream; the same text goes through coqui-tts's API in this process, which returns the
whole text's audio at once: its first audio is its whole run. Both run with the same torch thread count.
Medians and p90 over --runs after two warm-up runs, and the real-time factor (synthesis time / audio
length, pauses between sentences left out).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
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
FIRST = "The quick brown fox jumps over the lazy dog."
SENTENCES = 3
#: Coqui's pause between sentences (samples): its API adds one after every sentence, the backend only
#: between them, so speech is measured without them
PAUSE = 10000
WARMUP = 2
#: seconds of idle before each measurement (--settle); 0: back to back
SETTLE = 0.0


@dataclass
class Timing:
    first: float
    total: float
    samples: int


def bare(folder: Path, speaker: str, seed: int) -> tuple[Callable[[str], list[float]], int]:
    """coqui-tts's own API on the model, and its output rate."""
    import torch
    from TTS.api import TTS  # type: ignore[import-untyped]

    xtts = (folder / "vocab.json").is_file()
    model = folder if xtts else folder / "model.pth"
    tts = TTS(model_path=str(model), config_path=str(folder / "config.json"))
    rate = int(tts.synthesizer.output_sample_rate)
    extra = {"speaker": speaker, "language": "en"} if speaker else {}

    def synthesize(text: str) -> list[float]:
        torch.manual_seed(seed)  # as the server does before each request (its option seed)
        wav: list[float] = tts.tts(text=text, **extra)
        return wav

    return synthesize, rate


def time_bare(synthesize: Callable[[str], list[float]], text: str, sentences: int) -> Timing:
    started = time.perf_counter()
    wav = synthesize(text)
    took = time.perf_counter() - started
    return Timing(took, took, len(wav) - sentences * PAUSE)


async def time_stream(addr: str, speaker: str) -> Timing:
    started = time.perf_counter()
    first = 0.0
    size = 0
    async with connect(addr) as client, client.backend.TTSStream.open() as stream:
        await stream.send_message(pb.TTSRequest(text=TEXT, voice=speaker), end=True)
        async for reply in stream:
            if reply.audio and not size:
                first = time.perf_counter() - started
            size += len(reply.audio)
    return Timing(first, time.perf_counter() - started, size // 2 - (SENTENCES - 1) * PAUSE)


async def wait_loaded(addr: str, folder: Path, seed: int) -> None:
    async with connect(addr) as client:
        request = pb.ModelOptions(Model=str(folder), Options=[f"seed:{seed}"])
        result = await client.backend.LoadModel(request, timeout=300)
        if not result.success:
            raise SystemExit(f"LoadModel {folder} failed: {result.message}")


def summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return f"p50 {statistics.median(samples) * 1000:8.1f} ms  p90 {p90 * 1000:8.1f} ms"


def report(name: str, rate: int, grpc: list[Timing], whole: list[Timing], first: list[Timing]) -> None:
    seconds_grpc = statistics.median(t.samples for t in grpc) / rate
    seconds_bare = statistics.median(t.samples for t in whole) / rate
    first_grpc = statistics.median(t.first for t in grpc)
    first_bare = statistics.median(t.first for t in whole)
    first_sentence = statistics.median(t.first for t in first)
    total_grpc = statistics.median(t.total for t in grpc)
    total_bare = statistics.median(t.total for t in whole)
    rtf_grpc, rtf_bare = total_grpc / seconds_grpc, total_bare / seconds_bare
    print(
        f"coqui ({name}), {seconds_grpc:.2f} s of speech in 3 sentences ({seconds_bare:.2f} s from TTS.api):"
    )
    print(f"  first audio, TTSStream via gRPC:        {summary([t.first for t in grpc])}")
    print(f"  first audio, TTS.api (whole text):      {summary([t.first for t in whole])}")
    print(f"  TTS.api on the first sentence alone:    {summary([t.first for t in first])}")
    print(
        f"  first audio, bare / gRPC:               {first_bare / first_grpc:.2f}x sooner through the stream"
    )
    print(f"  first audio vs first sentence, bare / gRPC: {first_sentence / first_grpc:.2f}")
    print(f"  whole text, gRPC / bare:                {total_grpc * 1000:.0f} / {total_bare * 1000:.0f} ms")
    print(f"  real-time factor, gRPC / bare:          {rtf_grpc:.4f} / {rtf_bare:.4f}")
    print(f"  speed vs bare (bare RTF / gRPC RTF):    {rtf_bare / rtf_grpc:.2f} (target >= 0.95)")


async def bench(folder: Path, runs: int, threads: int, speaker: str = "", settle: float = SETTLE) -> None:
    import torch

    torch.set_num_threads(threads)
    seed = 5
    synthesize, rate = bare(folder, speaker, seed)
    env = {"OMP_NUM_THREADS": str(threads)}
    with spawn("coqui", timeout=120, env=env) as process:
        await wait_loaded(process.addr, folder, seed)
        grpc: list[Timing] = []
        whole: list[Timing] = []
        first: list[Timing] = []
        for run in range(WARMUP + runs):
            # Interleaved, so both see the same machine load.
            await asyncio.sleep(settle)
            streamed = await time_stream(process.addr, speaker)
            await asyncio.sleep(settle)
            here = time_bare(synthesize, TEXT, SENTENCES)
            alone = time_bare(synthesize, FIRST, 1)
            if run >= WARMUP:
                grpc.append(streamed)
                whole.append(here)
                first.append(alone)
    report(folder.name, rate, grpc, whole, first)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads on both sides")
    parser.add_argument("--model", type=Path, help="a Coqui model folder; default: the tests' tiny VITS")
    parser.add_argument("--xtts", action="store_true", help="the tests' tiny random XTTS")
    parser.add_argument("--speaker", default="", help="the voice to speak with (an XTTS preset voice)")
    parser.add_argument("--settle", type=float, default=SETTLE, help="seconds idle before each call")
    args: Any = parser.parse_args(argv)
    if args.model is not None:
        asyncio.run(bench(args.model.resolve(), args.runs, args.threads, args.speaker, args.settle))
        return
    sys.path.insert(0, os.fspath(Path(__file__).resolve().parents[1]))  # the checkout, for tests/
    from tests.coqui.models import XTTS_SPEAKER, build_vits, build_xtts

    with tempfile.TemporaryDirectory() as scratch:
        if args.xtts:
            folder = build_xtts(Path(scratch) / "tiny-xtts")
            asyncio.run(bench(folder, args.runs, args.threads, args.speaker or XTTS_SPEAKER, args.settle))
        else:
            vits = build_vits(Path(scratch) / "tiny-vits")
            asyncio.run(bench(vits, args.runs, args.threads, args.speaker, args.settle))


if __name__ == "__main__":
    main()
