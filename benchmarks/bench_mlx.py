"""mlx through gRPC against the same mlx-lm generation in-process.

    python benchmarks/bench_mlx.py [--tokens 64] [--runs 3] [--hidden 512] [--layers 8]

No MLX model installs offline, so the model is a random Llama built here (a byte-level BPE trained on a
few sentences, `--hidden` wide, `--layers` deep: 512 x 8 is about 25M parameters) and saved as an MLX
folder. Same folder, prompt and parameters (greedy, EOS ignored, no stop strings) on both sides. The
backend runs as a real `localfleet serve mlx` process and is read as core reads it (PredictStream on a
new connection); the floor is mlx-lm's own `stream_generate` in this process. Each round runs both sides
once, in a shuffled order, and the ratio is the median of the rounds' ratios. Also printed: time to first
token each way, and Health's latency while a generation runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # tests.tiny_tokenizer: the tokenizer the tests train

from localfleet.client import connect  # noqa: E402 (after the path above)
from localfleet.proto import backend_pb2 as pb  # noqa: E402
from localfleet.testing import spawn  # noqa: E402
from tests.tiny_tokenizer import build_tokenizer  # noqa: E402

PROMPT = "The quick brown fox jumps over the lazy dog. A man is eating food."


def build_model(folder: Path, hidden: int, layers: int) -> Path:
    """A random Llama `hidden` wide and `layers` deep, saved as an MLX model folder."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models.llama import Model, ModelArgs

    tokenizer = build_tokenizer(folder, "{% for m in messages %}{{ m['content'] }}{% endfor %}")
    args: dict[str, Any] = {
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "intermediate_size": hidden * 11 // 4,
        "num_attention_heads": max(1, hidden // 64),
        "num_key_value_heads": max(1, hidden // 256),
        "rms_norm_eps": 1e-5,
        "vocab_size": len(tokenizer),
        "max_position_embeddings": 4096,
        "tie_word_embeddings": True,
    }
    mx.random.seed(0)
    model = Model(ModelArgs.from_dict(args))  # type: ignore[no-untyped-call]  # mlx-lm's is untyped
    mx.save_safetensors(str(folder / "model.safetensors"), dict(tree_flatten(model.parameters())))
    (folder / "config.json").write_text(json.dumps(args))
    return folder


class InProcess:
    def __init__(self, folder: Path) -> None:
        from mlx_lm import load

        loaded = load(str(folder))
        self.model, self.tokenizer = loaded[0], loaded[1]

    def run(self, tokens: int) -> tuple[float, float]:
        """One greedy generation through mlx-lm's stream_generate: (tokens/s, seconds to first token)."""
        from mlx_lm import stream_generate

        started = time.perf_counter()
        first = 0.0
        produced = 0
        ids = self.tokenizer.encode(PROMPT)
        for response in stream_generate(self.model, self.tokenizer, ids, max_tokens=tokens):
            produced = response.generation_tokens
            first = first or time.perf_counter() - started
        elapsed = time.perf_counter() - started
        assert produced == tokens, f"mlx-lm stopped after {produced} tokens"
        return tokens / elapsed, first


async def through_grpc(addr: str, tokens: int) -> tuple[float, float]:
    """One PredictStream as core reads it (a new connection): (tokens/s, seconds to first token)."""
    started = time.perf_counter()
    first = 0.0
    last = None
    request = pb.PredictOptions(Prompt=PROMPT, Tokens=tokens, Temperature=0, IgnoreEOS=True)
    async with connect(addr) as client, client.backend.PredictStream.open() as call:
        await call.send_message(request, end=True)
        async for reply in call:
            first = first or (time.perf_counter() - started if reply.message else 0.0)
            last = reply
    elapsed = time.perf_counter() - started
    assert last is not None, "the backend sent no reply"
    assert last.tokens == tokens, f"the backend produced {last.tokens} tokens"
    return tokens / elapsed, first


async def health_while_generating(addr: str, tokens: int) -> float:
    """Health's median latency in seconds while a generation runs."""
    latencies: list[float] = []
    async with connect(addr) as client:
        generation = asyncio.ensure_future(through_grpc(addr, tokens))
        while not generation.done() and len(latencies) < 50:
            started = time.perf_counter()
            await client.backend.Health(pb.HealthMessage())
            latencies.append(time.perf_counter() - started)
        await generation
    return statistics.median(latencies)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    opts = parser.parse_args()
    folder = build_model(Path(tempfile.mkdtemp(prefix="bench-mlx-")), opts.hidden, opts.layers)
    bare = InProcess(folder)
    bare.run(4)  # warm-up: first-call compilation
    with spawn("mlx", env={"HF_HUB_OFFLINE": "1"}) as process:
        async with connect(process.addr) as client:
            loaded = await client.backend.LoadModel(pb.ModelOptions(Model=str(folder)))
            assert loaded.success, loaded.message
        await through_grpc(process.addr, 4)
        rounds: list[tuple[tuple[float, float], tuple[float, float]]] = []
        for _ in range(opts.runs):
            order = ["grpc", "bare"]
            random.shuffle(order)
            result: dict[str, tuple[float, float]] = {}
            for side in order:
                if side == "grpc":
                    result[side] = await through_grpc(process.addr, opts.tokens)
                else:
                    result[side] = bare.run(opts.tokens)
            rounds.append((result["grpc"], result["bare"]))
        health = await health_while_generating(process.addr, opts.tokens)
    grpc_tps = statistics.median(g[0] for g, _ in rounds)
    bare_tps = statistics.median(b[0] for _, b in rounds)
    ratio = statistics.median(g[0] / b[0] for g, b in rounds)
    print(f"model: random Llama {opts.hidden} x {opts.layers}, {opts.tokens} tokens, {opts.runs} rounds")
    print(f"through gRPC (PredictStream): {grpc_tps:.1f} tok/s, first token {rounds[-1][0][1] * 1e3:.0f} ms")
    print(f"mlx-lm in-process:            {bare_tps:.1f} tok/s, first token {rounds[-1][1][1] * 1e3:.0f} ms")
    print(f"ratio gRPC / in-process (median of rounds): {ratio:.3f}")
    print(f"Health p50 while generating: {health * 1e3:.2f} ms")


if __name__ == "__main__":
    asyncio.run(main())
