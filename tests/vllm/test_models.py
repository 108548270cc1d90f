"""Loading what else vLLM serves: the tiny Llama as an embedding model, and loads that fail with a
message naming the problem. One backend process (`localfleet serve
vllm`, as core starts it), loaded in turn; at the end it is killed, and vLLM's engine processes must go
with it."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import pytest_asyncio
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from localfleet.client import Client, connect
from localfleet.proto import backend_pb2 as pb
from localfleet.testing import Process, spawn

pytestmark = pytest.mark.asyncio(loop_scope="module")

LOAD: dict[str, Any] = {
    "MaxModelLen": 512,
    "EnforceEager": True,
    "DType": "bfloat16",
    "Options": ["kv_cache_bytes:67108864", "max_num_seqs:16"],
}
GREEDY: dict[str, Any] = {
    "Prompt": "Hello, how are you today?",
    "Tokens": 16,
    "Temperature": 0,
    "IgnoreEOS": True,
}


@pytest.fixture(scope="module")
def server() -> Iterator[Process]:
    env = {"LOCALAI_BACKEND_PARENT_WATCH": "false", "HF_HUB_OFFLINE": "1"}
    with spawn("vllm", "--log-level", "ERROR", env=env, timeout=60) as process:
        yield process


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(server: Process) -> AsyncIterator[Client]:
    async with connect(server.addr) as client:
        yield client


async def load(served: Client, model: Path, **fields: Any) -> pb.Result:
    result: pb.Result = await served.backend.LoadModel(
        pb.ModelOptions(Model=str(model), **{**LOAD, **fields}), timeout=300
    )
    return result


async def text_of(served: Client, **fields: Any) -> bytes:
    reply = await served.backend.Predict(pb.PredictOptions(**{**GREEDY, **fields}))
    return bytes(reply.message)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"LoraAdapter": "/nowhere/adapter"}, "/nowhere/adapter"),
        ({"EngineArgs": '{"no_such_argument": 1}'}, "no_such_argument"),
        ({"EngineArgs": "[1, 2]"}, "EngineArgs"),
        ({"GPUMemoryUtilization": 1.5}, "GPUMemoryUtilization"),
        ({"Options": ["max_num_seqs:many"]}, "max_num_seqs"),
    ],
)
async def test_a_load_that_cannot_work_fails_naming_the_problem(
    served: Client, tiny_llama: Path, fields: dict[str, Any], named: str
) -> None:
    result = await load(served, tiny_llama, **fields)
    assert not result.success
    assert named in result.message


async def test_a_vision_model_without_torchvision_fails_naming_it(
    served: Client, tiny_llama: Path, tmp_path: Path
) -> None:
    import importlib.util

    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed (a GPU build): vision models load")
    from tests.vllm.models import build_tiny_llava

    result = await load(served, build_tiny_llava(tmp_path / "llava", tiny_llama), LimitImagePerPrompt=1)
    assert not result.success
    assert "torchvision" in result.message


async def test_an_embedding_model_gives_unit_vectors_that_tell_texts_apart(
    served: Client, tiny_llama: Path
) -> None:
    result = await load(served, tiny_llama, Embeddings=True)
    assert result.success, result.message
    assert "embedding" in result.message

    async def embed(**fields: Any) -> list[float]:
        reply = await served.backend.Embedding(pb.PredictOptions(**fields))
        assert reply.dim == len(reply.embeddings) == 128
        assert reply.tokens > 0
        return list(reply.embeddings)

    fox = await embed(Embeddings="The quick brown fox")
    assert math.isclose(math.sqrt(sum(x * x for x in fox)), 1.0, abs_tol=1e-2)
    assert await embed(Embeddings="The quick brown fox") == pytest.approx(fox, abs=1e-3)
    assert await embed(Embeddings="A man is eating food.") != pytest.approx(fox, abs=1e-3)
    tokens = await served.backend.TokenizeString(pb.PredictOptions(Prompt="The quick brown fox"))
    bos = [1]  # the tokenizer's <s>, which Embeddings text gets too
    assert await embed(EmbeddingTokens=bos + list(tokens.tokens)) == pytest.approx(fox, abs=1e-2)
    with pytest.raises(GRPCError) as err:
        await served.backend.Predict(pb.PredictOptions(**GREEDY))
    assert err.value.status == Status.INVALID_ARGUMENT
    assert "embedding model" in (err.value.message or "")
    with pytest.raises(GRPCError) as err:
        await served.backend.Embedding(pb.PredictOptions(Embeddings=""))
    assert err.value.status == Status.INVALID_ARGUMENT


async def test_the_engine_processes_end_with_a_killed_backend(
    server: Process, served: Client, tiny_llama: Path
) -> None:
    status = await served.backend.Status(pb.HealthMessage())
    if status.state != pb.StatusResponse.READY:
        assert (await load(served, tiny_llama)).success
    engine = psutil.Process(server.popen.pid).children(recursive=True)
    assert any("EngineCore" in p.name() for p in engine), [p.name() for p in engine]
    server.popen.kill()  # as the OOM killer would: no shutdown of any kind
    server.popen.wait()
    _, alive = psutil.wait_procs(engine, timeout=20)
    assert not alive, [p.name() for p in alive]
