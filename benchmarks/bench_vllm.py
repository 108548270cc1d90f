"""vllm through gRPC against the same vLLM AsyncLLM in-process: continuous batching kept intact.

    python benchmarks/bench_vllm.py [--streams 16] [--tokens 512] [--runs 5] [--model DIR]

The backend runs as a real `localfleet serve vllm` process; the floor is an AsyncLLM in this process,
built from the very engine arguments the backend builds (`localfleet_vllm.engine.engine_args`), fed the
same token ids with the same sampling (greedy, IgnoreEOS, DELTA outputs). The model is the tests' tiny
random Llama (head_dim 64), built into a temporary folder unless --model names another.

Printed:
- aggregate tokens/s of N concurrent PredictStream calls (each on its own connection, as core makes
  them) against N concurrent `AsyncLLM.generate` calls in-process: the ratio is held to >= 0.95. Each
  round runs both sides once, in a shuffled order, and the ratio is the median of the rounds' ratios.
  The streams are read by one curl (libcurl, nghttp2: a reader in C, about as light as core's Go
  client), by the same curl at nice 19 (the backend and its engine first, the reader on what CPU they
  leave: on a 2-core machine the reader otherwise takes CPU from the engine, which a client on its own
  machine would not), and by grpclib in this process (a heavy Python reader).
- the same through gRPC with one stream: what batching buys (N streams / 1 stream).
- Health p50 while N streams run (read by curl at nice 19), target < 1 ms.
The two engines never run at once: an idle vLLM engine core waits on its socket and takes no CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import multiprocessing
import os
import random
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from localfleet.client import connect, wait_healthy
from localfleet.proto import backend_pb2 as pb
from localfleet.testing import spawn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # benchmarks.readers and the tests' model builder

from benchmarks.readers import curl_reads  # noqa: E402 (after the path above)

PROMPT = "The quick brown fox jumps over the lazy dog. Hello, how are you today?"
LOAD: dict[str, Any] = {"MaxModelLen": 1024, "EnforceEager": True, "DType": "bfloat16"}
OPTIONS = ["kv_cache_bytes:268435456", "max_num_seqs:32"]


def tiny_model(path: str | None) -> Path:
    if path:
        return Path(path)
    from tests.vllm.models import build_tiny_llama

    folder = Path(tempfile.gettempdir()) / "localfleet-bench" / "vllm-tiny-llama"
    if not (folder / "config.json").is_file():
        build_tiny_llama(folder)
    return folder


def request(tokens: int) -> pb.PredictOptions:
    return pb.PredictOptions(Prompt=PROMPT, Tokens=tokens, Temperature=0, IgnoreEOS=True)


async def one_stream(addr: str, tokens: int) -> int:
    async with connect(addr) as client, client.backend.PredictStream.open() as call:
        await call.send_message(request(tokens), end=True)
        last = None
        async for reply in call:
            last = reply
    assert last is not None
    assert last.tokens == tokens, f"the backend produced {last.tokens} tokens"
    return tokens


async def through_grpc(addr: str, streams: int, tokens: int) -> float:
    """Aggregate tokens/s of `streams` concurrent PredictStream calls."""
    started = time.perf_counter()
    produced = await asyncio.gather(*(one_stream(addr, tokens) for _ in range(streams)))
    return sum(produced) / (time.perf_counter() - started)


def through_curl(addr: str, streams: int, tokens: int, folder: Path, *, nice: bool = False) -> float:
    """Aggregate tokens/s of `streams` concurrent PredictStream calls read by one curl (libcurl and
    nghttp2, in C: a reader about as light as core's Go client), each on its own connection, timed from
    curl's start to the last stream's end."""
    message = request(tokens).SerializeToString()
    body = folder / "request.bin"
    body.write_bytes(b"\x00" + struct.pack(">I", len(message)) + message)  # gRPC framing
    command = ["nice", "-n", "19"] if nice else []
    command += ["curl", "--silent", "--show-error", "--parallel", "--parallel-immediate", "--parallel-max",
               str(streams)]  # fmt: skip
    for i in range(streams):
        if i:
            command.append("--next")
        command += ["--http2-prior-knowledge", "--data-binary", f"@{body}", "-H",
                    "content-type: application/grpc", "-H", "te: trailers", "--output",
                    str(folder / f"out{i}.bin"), f"http://{addr}/backend.Backend/PredictStream"]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    elapsed = time.perf_counter() - started
    for i in range(streams):
        stream = (folder / f"out{i}.bin").read_bytes()
        last, at = None, 0
        while at < len(stream):
            (size,) = struct.unpack(">I", stream[at + 1 : at + 5])
            last = pb.Reply.FromString(stream[at + 5 : at + 5 + size])
            at += 5 + size
        assert last is not None, f"curl read no reply from stream {i}"
        assert last.tokens == tokens, f"curl read {last.tokens} tokens from stream {i}"
    return streams * tokens / elapsed


class Bare:
    """The same engine in this process, straight through AsyncLLM."""

    def __init__(self, model: Path) -> None:
        from transformers import AutoTokenizer
        from vllm.v1.engine.async_llm import AsyncLLM

        from localfleet.backend import ModelRef
        from localfleet.options import parse_options
        from localfleet_vllm.engine import engine_args
        from localfleet_vllm.servicer import VllmOptions, load_spec

        options = parse_options(VllmOptions, OPTIONS)
        spec = load_spec(ModelRef(str(model), str(model), ""), options, pb.ModelOptions(**LOAD))
        self.llm = AsyncLLM.from_engine_args(engine_args(spec))
        self.ids = AutoTokenizer.from_pretrained(model).encode(PROMPT)

    async def one(self, tokens: int, ids: list[int] | None = None) -> int:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(
            temperature=0, max_tokens=tokens, ignore_eos=True, output_kind=RequestOutputKind.DELTA
        )
        produced = 0
        prompt = {"prompt_token_ids": ids or self.ids}
        async for out in self.llm.generate(prompt, params, uuid.uuid4().hex):  # type: ignore[arg-type]
            produced += len(out.outputs[0].token_ids)
            out.outputs[0].text.encode()  # what the backend sends on
        return produced

    async def rate(self, streams: int, tokens: int) -> float:
        started = time.perf_counter()
        produced = await asyncio.gather(*(self.one(tokens) for _ in range(streams)))
        assert produced == [tokens] * streams
        return sum(produced) / (time.perf_counter() - started)


def _streams_elsewhere(addr: str, streams: int, tokens: int, repeat: int) -> None:
    """In another process: `repeat` rounds of concurrent streams, read as core reads them."""

    async def go() -> None:
        for _ in range(repeat):
            await through_grpc(addr, streams, tokens)

    asyncio.run(go())


async def health_while_streaming(addr: str, streams: int, tokens: int) -> list[float]:
    """Health round trips from this process while `streams` streams run, read by curl at nice 19 (a
    light reader, out of the backend's way) or else by grpclib in another process."""
    folder = Path(tempfile.mkdtemp(prefix="bench-vllm-health-"))
    if curl_reads():
        read = functools.partial(through_curl, addr, streams, tokens, folder, nice=True)

        async def three_rounds() -> None:
            for _ in range(3):
                await asyncio.to_thread(read)

        reading: asyncio.Future[Any] = asyncio.ensure_future(three_rounds())
    else:
        reader = multiprocessing.get_context("spawn").Process(
            target=_streams_elsewhere, args=(addr, streams, tokens, 3)
        )
        reader.start()
        reading = asyncio.ensure_future(asyncio.to_thread(reader.join))
    samples: list[float] = []
    async with connect(addr) as client:
        while (await client.backend.Status(pb.HealthMessage())).state != pb.StatusResponse.BUSY:
            if reading.done():
                raise RuntimeError("the streams ended before Health was probed")
            await asyncio.sleep(0.01)
        while not reading.done():
            started = time.perf_counter()
            await client.backend.Health(pb.HealthMessage())
            samples.append(time.perf_counter() - started)
            await asyncio.sleep(0.002)
    await reading
    shutil.rmtree(folder, ignore_errors=True)
    return samples


async def rounds(
    args: argparse.Namespace, addr: str, bare: Bare
) -> tuple[list[float], dict[str, list[float]]]:
    """Each side once per round, in a shuffled order: the in-process rates, and each reader's."""
    local: list[float] = []
    rates: dict[str, list[float]] = {"grpc": [], "single": [], "curl": [], "niced": []}
    folder = Path(tempfile.mkdtemp(prefix="bench-vllm-"))
    curl = curl_reads()
    for _ in range(args.runs):
        sides = ["local", "grpc", "single"] + (["curl", "niced"] if curl else [])
        random.shuffle(sides)
        for side in sides:
            if side == "local":
                local.append(await bare.rate(args.streams, args.tokens))
            elif side == "grpc":
                rates[side].append(await through_grpc(addr, args.streams, args.tokens))
            elif side in ("curl", "niced"):
                measure = functools.partial(through_curl, nice=side == "niced")
                rates[side].append(await asyncio.to_thread(measure, addr, args.streams, args.tokens, folder))
            else:
                rates[side].append(await through_grpc(addr, 1, args.tokens))
    shutil.rmtree(folder, ignore_errors=True)
    return local, rates


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--model", help="a vLLM model folder (default: the tests' tiny random Llama)")
    args = parser.parse_args()
    model = tiny_model(args.model)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    env = {"LOCALAI_BACKEND_PARENT_WATCH": "false", "HF_HUB_OFFLINE": "1"}
    with spawn("vllm", "--log-level", "ERROR", env=env, timeout=120) as server:
        addr = server.addr
        await wait_healthy(addr, 120)
        async with connect(addr) as client:
            loaded = time.perf_counter()
            result = await client.backend.LoadModel(
                pb.ModelOptions(Model=str(model), Options=OPTIONS, **LOAD), timeout=600
            )
            assert result.success, result.message
            load_s = time.perf_counter() - loaded
            idle = []
            for _ in range(200):
                started = time.perf_counter()
                await client.backend.Health(pb.HealthMessage())
                idle.append(time.perf_counter() - started)
        bare = Bare(model)
        # Warm both: vLLM's first passes (and the backend's warm-up request), page cache, clocks.
        await bare.one(4, [i % 300 for i in range(32)])
        await bare.rate(args.streams, args.tokens)
        await through_grpc(addr, args.streams, args.tokens)
        local, rates = await rounds(args, addr, bare)
        bare.llm.shutdown()
        del bare.llm  # shut down again at interpreter exit, it would raise from half-torn-down modules
        health = await health_while_streaming(addr, args.streams, args.tokens)

    curled, niced, remote, single = rates["curl"], rates["niced"], rates["grpc"], rates["single"]

    def ratio(measured: list[float]) -> str:
        # Per-round ratios: a burst of load from elsewhere slows one round, not the figure.
        pairs = [r / x for r, x in zip(measured, local, strict=True)]
        return (
            f"{statistics.median(measured):.0f} tokens/s, ratio {statistics.median(pairs):.3f} "
            f"(rounds {min(pairs):.3f}-{max(pairs):.3f})"
        )

    print(
        f"model {model.name}, prompt of {len(bare.ids)} tokens, {args.tokens} tokens greedy per stream, "
        f"{os.cpu_count()} CPUs; LoadModel {load_s:.1f} s"
    )
    print(f"AsyncLLM in-process, {args.streams} streams: {statistics.median(local):.0f} tokens/s")
    if curled:
        print(f"PredictStream x{args.streams}, read by curl (C):        {ratio(curled)}   target >= 0.95")
    else:
        print(f"PredictStream x{args.streams}, read by curl (C):        skipped (no curl with HTTP/2 here)")
    if niced:
        print(f"PredictStream x{args.streams}, curl at nice 19:         {ratio(niced)}")
    print(f"PredictStream x{args.streams}, read by grpclib (Python): {ratio(remote)}")
    print(
        f"PredictStream x1, read by grpclib: {statistics.median(single):.0f} tokens/s; "
        f"{args.streams} streams / 1 stream = {statistics.median(remote) / statistics.median(single):.1f}x"
    )
    print(
        f"Health p50 while {args.streams} streams run: {ms(statistics.median(health))} over {len(health)} "
        f"calls (p90 {ms(statistics.quantiles(health, n=10)[-1])}; idle p50 {ms(statistics.median(idle))})"
        "   target < 1 ms"
    )


if __name__ == "__main__":
    asyncio.run(main())
