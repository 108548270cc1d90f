"""bark: time to first audio through TTSStream, the real-time factor, and SoundGeneration, beside bare
`BarkModel.generate` in the same run (modeled on bench_kitten.py).

    python benchmarks/bench_bark.py [--runs 5] [--model FOLDER] [--voice PRESET]

FOLDER is a Bark model folder as on Hugging Face (suno/bark-small, with speaker_embeddings_path.json and
its arrays). Without it the tests' tiny random Bark (tests/bark/models.py: one-layer GPTs, seeded noise,
32 semantic tokens a generation) is built in the test cache: it measures the serving path (text
splitting, presets, the runtime, gRPC) around a cheap model, not a real model's synthesis. A
`localfleet serve bark` process is started; TTSStream is timed from the call to the first `Reply.audio`
(fresh connection each call, as LocalAI core makes it), then the whole stream; SoundGeneration from the
call to its answer. The bare side runs in this process: AutoProcessor and BarkModel.generate, a
sentence at a time with the same preset for speech, one generation cut at the duration for sound,
seeded as the backend seeds. Medians and p90 over --runs after a warm-up run, and the real-time factor
(synthesis time / audio length).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
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
SOUND = "[music] rain on a tin roof"
SOUND_SECONDS = 0.5
WARMUP = 1
SEED = 7


class Bare:
    """The engine with nothing around it: transformers' own calls, as its documentation makes them."""

    def __init__(self, folder: Path, voice: str | None) -> None:
        import torch
        from transformers import AutoProcessor, BarkModel
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]  # as the backend: no per-call notice
        self.torch = torch
        self.processor: Any = AutoProcessor.from_pretrained(str(folder))  # type: ignore[no-untyped-call]
        model: Any = BarkModel.from_pretrained(str(folder))
        self.model = model.eval()
        self.voice = voice
        self.rate = int(model.generation_config.sample_rate)

    def speech(self) -> Timing:
        started = time.perf_counter()
        first = 0.0
        size = 0
        self.torch.manual_seed(SEED)
        for sentence in SENTENCES:
            inputs = self.processor(sentence, voice_preset=self.voice)
            with self.torch.inference_mode():
                audio = self.model.generate(**inputs, do_sample=True)
            pcm = (audio[0].clamp(-1, 1) * 32767).to(self.torch.int16).numpy().tobytes()
            if not size:
                first = time.perf_counter() - started
            size += len(pcm)
        return Timing(first, time.perf_counter() - started, size)

    def sound(self) -> Timing:
        started = time.perf_counter()
        self.torch.manual_seed(SEED)
        inputs = self.processor(SOUND)
        tokens = math.ceil(SOUND_SECONDS * 49.9) + 1
        with self.torch.inference_mode():
            audio = self.model.generate(**inputs, do_sample=True, semantic_max_new_tokens=tokens)
        audio = audio[0, : round(SOUND_SECONDS * self.rate)]
        size = 2 * len(audio)
        took = time.perf_counter() - started
        return Timing(took, took, size)


async def time_sound(addr: str, dst: Path) -> Timing:
    started = time.perf_counter()
    async with connect(addr) as client:
        request = pb.SoundGenerationRequest(text=SOUND, dst=str(dst), duration=SOUND_SECONDS)
        result = await client.backend.SoundGeneration(request, timeout=600)
    took = time.perf_counter() - started
    if not result.success:
        raise SystemExit(f"SoundGeneration failed: {result.message}")
    return Timing(took, took, 0)  # the file's length is the bare side's, cut at the same duration


def summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    median = statistics.median(samples)
    return f"min {ordered[0] * 1000:8.1f} ms  p50 {median * 1000:8.1f} ms  p90 {p90 * 1000:8.1f} ms"


def speed(bare: list[float], grpc: list[float]) -> str:
    """bare time / gRPC time (1.0: no cost), at the median and at the best run (the least disturbed by
    other processes on a shared machine)."""
    return f"{statistics.median(bare) / statistics.median(grpc):.3f} (best runs {min(bare) / min(grpc):.3f})"


def report(
    name: str, rate: int, grpc: list[Timing], local: list[Timing], *, sounds: list[Timing], bare: list[Timing]
) -> None:
    seconds = statistics.median(t.audio_bytes for t in local) / 2 / rate
    total_grpc = statistics.median(t.total for t in grpc)
    total_bare = statistics.median(t.total for t in local)
    print(f"bark ({name}), {seconds:.2f} s of speech in {len(SENTENCES)} sentences:")
    print(f"  first chunk, TTSStream via gRPC:   {summary([t.first for t in grpc])}")
    print(f"  first chunk, bare generate:        {summary([t.first for t in local])}")
    print(f"  first chunk, bare / gRPC speed:    {speed([t.first for t in local], [t.first for t in grpc])}")
    print(f"  whole stream, bare / gRPC speed:   {speed([t.total for t in local], [t.total for t in grpc])}")
    print(f"  real-time factor, gRPC / bare:     {total_grpc / seconds:.4f} / {total_bare / seconds:.4f}")
    print(f"  SoundGeneration {SOUND_SECONDS} s via gRPC:  {summary([t.total for t in sounds])}")
    print(f"  sound, bare generate:              {summary([t.total for t in bare])}")
    print(f"  sound, bare / gRPC speed:          {speed([t.total for t in bare], [t.total for t in sounds])}")


async def wait_loaded(addr: str, folder: Path, voice: str | None) -> None:
    options = [f"voice:{voice}"] if voice else []
    async with connect(addr) as client:
        request = pb.ModelOptions(Model=str(folder), Seed=SEED, Options=options)
        result = await client.backend.LoadModel(request, timeout=600)
        if not result.success:
            raise SystemExit(f"LoadModel {folder} failed: {result.message}")
        print(result.message)


async def bench(folder: Path, voice: str | None, runs: int) -> None:
    bare = Bare(folder, voice)
    with tempfile.TemporaryDirectory() as scratch:
        env = {"HF_HUB_OFFLINE": "1", "LOCALFLEET_PATH_ROOTS": json.dumps([scratch, str(folder.parent)])}
        with spawn("bark", env=env, timeout=60) as process:
            await measure(process.addr, folder, voice, bare, scratch=Path(scratch), runs=runs)


async def measure(
    addr: str, folder: Path, voice: str | None, bare: Bare, *, scratch: Path, runs: int
) -> None:
    await wait_loaded(addr, folder, voice)
    grpc: list[Timing] = []
    local: list[Timing] = []
    sounds: list[Timing] = []
    bare_sounds: list[Timing] = []
    for run in range(WARMUP + runs):
        # Interleaved, so both see the same machine load.
        streamed = await time_stream(addr, pb.TTSRequest(text=" ".join(SENTENCES)))
        here = bare.speech()
        made = await time_sound(addr, scratch / "sound.wav")
        here_sound = bare.sound()
        if run >= WARMUP:
            grpc.append(streamed)
            local.append(here)
            sounds.append(made)
            bare_sounds.append(here_sound)
    report(folder.name, bare.rate, grpc, local, sounds=sounds, bare=bare_sounds)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--model", type=Path, help="a Bark model folder; default: the tests' tiny random Bark"
    )
    parser.add_argument("--voice", help="a voice preset of the model (default v2/en_speaker_6)")
    args: Any = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.model is not None:
        folder = args.model.resolve()
        voice = args.voice or "v2/en_speaker_6"  # the backend's default when the model has it
    else:
        from tests.bark.models import cached

        folder, voice = cached(), args.voice or "v2/en_speaker_0"
    asyncio.run(bench(folder, voice, args.runs))


if __name__ == "__main__":
    main()
