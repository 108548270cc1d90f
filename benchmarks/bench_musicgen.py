"""transformers MusicGen: time to a WAV through SoundGeneration and the real-time factor, beside bare
`model.generate` in the same run.

    python benchmarks/bench_musicgen.py [--runs 5] [--seconds 4] [--model FOLDER]

FOLDER is a MusicGen folder (e.g. facebook/musicgen-small downloaded from Hugging Face). Without it the
tests' tiny random MusicGen (tests/transformers/tiny_musicgen.py, built once into the test cache) is used:
it measures the serving path (the runtime, gRPC, the processor, generate's steps, the WAV) around a
near-free model, where any overhead of the backend's shows most. A `localfleet serve transformers`
process is started and loaded with a seed; SoundGeneration is timed from the call (a fresh connection
each time, as LocalAI core makes it) to its Result, the WAV complete on disk. The bare side runs the same
text through the processor and `model.generate` in this process, with the same steps, sampling and
guidance, and writes the same WAV with the standard library. Runs alternate, after one warm-up of each;
medians and p90, the real-time factor (time / seconds of audio) and bare speed / served speed (target
>= 0.95). The served WAV is synced to disk before success is answered (localfleet.files.replacing) and
the bare one is not: what syncing the bare WAV costs is printed beside, as part of the difference.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import sys
import tempfile
import time
import wave
from pathlib import Path
from typing import Any

from localfleet.client import connect
from localfleet.proto import backend_pb2 as pb
from localfleet.testing import spawn

TEXT = "80s pop track with bassy drums"
SEED = 11
WARMUP = 1
SETTLE = 0.3  # seconds between measurements, so neither side's threads still spin for the other


class Bare:
    """The model in this process, straight through transformers."""

    def __init__(self, folder: Path) -> None:
        from transformers import AutoModelForTextToWaveform, AutoProcessor

        self.model = AutoModelForTextToWaveform.from_pretrained(folder).eval()
        self.processor = AutoProcessor.from_pretrained(folder)  # type: ignore[no-untyped-call]
        self.rate = int(self.model.config.audio_encoder.sampling_rate)
        self.frame_rate = int(self.model.audio_encoder.config.frame_rate)
        channels = int(self.model.config.decoder.audio_channels)
        self.delay = int(self.model.decoder.num_codebooks) // channels - 1  # the codebooks' delay pattern

    def wav(self, seconds: float, dst: Path) -> float:
        """Seconds from the text to a written WAV of `seconds` of audio."""
        import numpy as np
        import torch

        started = time.perf_counter()
        inputs = self.processor(text=[TEXT], padding=True, return_tensors="pt")
        steps = math.ceil(seconds * self.frame_rate) + self.delay
        torch.manual_seed(SEED)
        with torch.inference_mode():
            audio = self.model.generate(**inputs, max_new_tokens=steps)
        samples = audio[0].float().mean(dim=0).numpy()[: round(seconds * self.rate)]
        with wave.open(str(dst), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(self.rate)
            out.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
        return time.perf_counter() - started


async def served_wav(addr: str, seconds: float, dst: Path) -> float:
    started = time.perf_counter()
    async with connect(addr) as client:
        result = await client.backend.SoundGeneration(
            pb.SoundGenerationRequest(text=TEXT, duration=seconds, dst=str(dst)), timeout=600
        )
    took = time.perf_counter() - started
    if not result.success:
        raise SystemExit(f"SoundGeneration failed: {result.message}")
    return took


def sync_cost(path: Path) -> float:
    """Seconds to fsync a copy of `path` and its folder, as files.replacing does for every WAV."""
    copy = path.with_suffix(".synced")
    started = time.perf_counter()
    with open(copy, "wb") as out:
        out.write(path.read_bytes())
        out.flush()
        os.fsync(out.fileno())
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
    return time.perf_counter() - started


def frames(path: Path) -> int:
    with wave.open(str(path)) as wav:
        count: int = wav.getnframes()
        return count


def summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return f"p50 {statistics.median(samples) * 1000:8.1f} ms  p90 {p90 * 1000:8.1f} ms"


async def bench(folder: Path, runs: int, seconds: float, scratch: Path) -> None:
    bare = Bare(folder)
    with spawn("transformers", timeout=120) as process:
        async with connect(process.addr) as client:
            loaded = await client.backend.LoadModel(
                pb.ModelOptions(Model=str(folder), Seed=SEED, Options=[f"max_seconds:{max(seconds, 1)}"]),
                timeout=600,
            )
            if not loaded.success:
                raise SystemExit(f"LoadModel {folder} failed: {loaded.message}")
        served: list[float] = []
        local: list[float] = []
        synced: list[float] = []
        for run in range(WARMUP + runs):
            await asyncio.sleep(SETTLE)
            grpc = await served_wav(process.addr, seconds, scratch / "served.wav")
            await asyncio.sleep(SETTLE)
            here = bare.wav(seconds, scratch / "bare.wav")
            if run >= WARMUP:
                served.append(grpc)
                local.append(here)
                synced.append(sync_cost(scratch / "bare.wav"))
    made = frames(scratch / "served.wav") / bare.rate
    assert frames(scratch / "served.wav") == frames(scratch / "bare.wav")
    grpc_p50, bare_p50 = statistics.median(served), statistics.median(local)
    print(f"transformers MusicGen ({folder.name}), {made:.2f} s of {bare.rate} Hz audio, {runs} runs:")
    print(f"  text to WAV, SoundGeneration via gRPC: {summary(served)}")
    print(f"  text to WAV, bare model.generate:      {summary(local)}")
    print(f"  real-time factor, gRPC / bare:         {grpc_p50 / made:.4f} / {bare_p50 / made:.4f}")
    extra = (grpc_p50 - bare_p50) * 1000
    print(f"  speed, bare time / gRPC time:          {bare_p50 / grpc_p50:.3f} (+{extra:.1f} ms a request)")
    print(f"  of which syncing the WAV to disk:      {statistics.median(synced) * 1000:.1f} ms (p50)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds of audio a request asks for")
    parser.add_argument("--model", type=Path, help="a MusicGen folder; default: the tests' tiny one")
    args: Any = parser.parse_args(argv)
    if args.model is not None:
        folder = args.model.resolve()
    else:
        sys.path.insert(0, os.fspath(Path(__file__).resolve().parents[1]))  # the checkout, for tests/
        from tests.transformers.tiny_musicgen import build_tiny_musicgen

        folder = build_tiny_musicgen()
    with tempfile.TemporaryDirectory() as scratch:
        asyncio.run(bench(folder, args.runs, args.seconds, Path(scratch)))


if __name__ == "__main__":
    main()
