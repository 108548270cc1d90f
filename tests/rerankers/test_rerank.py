"""rerankers over real gRPC: a CrossEncoder built from the bundled MiniLM weights with a seeded head.

The head is random, so its scores mean nothing; what is checked is what core relies on (order, top_n,
index, usage), against the same model scored in-process.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from localfleet.proto import backend_pb2 as pb
from localfleet.testing import Served, serving
from localfleet_rerankers.servicer import Rerankers
from tests.transformers.models import build_cross_encoder, build_tiny_t5_ranker

os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytestmark = pytest.mark.asyncio(loop_scope="module")

QUERY = "What does the man eat?"
DOCUMENTS = [
    "A man is eating food.",
    "The girl is carrying a baby.",
    "A man is eating a piece of bread.",
    "A monkey is playing drums.",
    "Two men pushed carts through the woods.",
]


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_cross_encoder(tmp_path_factory.mktemp("cross-encoder"))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def reranker(cross_encoder: Path) -> AsyncIterator[Served]:
    async with serving(Rerankers()) as served:
        result = await served.client.backend.LoadModel(pb.ModelOptions(Model=str(cross_encoder)))
        assert result.success, result.message
        yield served


@pytest.fixture(scope="module")
def bare(cross_encoder: Path) -> Any:
    from sentence_transformers import CrossEncoder

    return CrossEncoder(str(cross_encoder), device="cpu", local_files_only=True)


async def rerank(
    served: Served, query: str, documents: list[str], top_n: int = 0, timeout: float | None = None
) -> pb.RerankResult:
    result: pb.RerankResult = await served.client.backend.Rerank(
        pb.RerankRequest(query=query, documents=documents, top_n=top_n), timeout=timeout
    )
    return result


async def test_results_are_sorted_by_descending_score_with_indexes_into_the_request(
    reranker: Served, bare: Any
) -> None:
    result = await rerank(reranker, QUERY, DOCUMENTS)
    expected = [float(s) for s in bare.predict([(QUERY, d) for d in DOCUMENTS])]
    assert len(result.results) == len(DOCUMENTS)
    scores = [r.relevance_score for r in result.results]
    assert scores == sorted(scores, reverse=True)
    assert sorted(r.index for r in result.results) == list(range(len(DOCUMENTS)))
    for r in result.results:
        assert r.text == DOCUMENTS[r.index]
        assert r.relevance_score == pytest.approx(expected[r.index], abs=1e-5)
    assert len(set(scores)) > 1  # the seeded head tells documents apart


async def test_top_n_keeps_the_best_n_and_zero_means_all(reranker: Served) -> None:
    full = await rerank(reranker, QUERY, DOCUMENTS)
    best_two = await rerank(reranker, QUERY, DOCUMENTS, top_n=2)
    assert [r.index for r in best_two.results] == [r.index for r in full.results[:2]]
    more = await rerank(reranker, QUERY, DOCUMENTS, top_n=50)
    assert [r.index for r in more.results] == [r.index for r in full.results]


async def test_usage_counts_the_tokens_the_model_read(reranker: Served, bare: Any) -> None:
    result = await rerank(reranker, QUERY, DOCUMENTS)
    expected = sum(len(bare.tokenizer(QUERY, d)["input_ids"]) for d in DOCUMENTS)
    assert result.usage.total_tokens == expected
    assert result.usage.prompt_tokens == expected


async def test_text_past_the_window_scores_as_if_it_were_not_there(reranker: Served) -> None:
    query = " ".join(DOCUMENTS * 30)  # about 600 tokens: more than the model's 512
    documents = [" ".join(DOCUMENTS * 40), *DOCUMENTS[:2]]
    alone = await rerank(reranker, query, documents)
    # 40 MB after the query (paired with every document) and 2 MB after a document: the model reads
    # the same tokens; tokenizing all of it took minutes.
    tail = " Two men pushed carts through the woods."
    followed = await rerank(
        reranker,
        query + tail * (40 * 2**20 // len(tail)),
        [documents[0] + tail * 50_000, *documents[1:]],
        timeout=60,
    )
    assert [r.index for r in followed.results] == [r.index for r in alone.results]
    assert [r.relevance_score for r in followed.results] == [r.relevance_score for r in alone.results]
    assert followed.usage.total_tokens == alone.usage.total_tokens
    assert len(next(r.text for r in followed.results if r.index == 0)) > 2_000_000  # echoed whole


async def test_one_document_comes_back_alone(reranker: Served, bare: Any) -> None:
    result = await rerank(reranker, QUERY, [DOCUMENTS[2]])
    [only] = result.results
    assert only.index == 0
    assert only.text == DOCUMENTS[2]
    assert only.relevance_score == pytest.approx(float(bare.predict([(QUERY, DOCUMENTS[2])])[0]), abs=1e-5)


async def test_concurrent_requests_are_batched_and_each_gets_its_own_ranking(reranker: Served) -> None:
    queries = [f"{QUERY} ({i})" for i in range(8)]
    alone = [await rerank(reranker, q, DOCUMENTS[: 2 + i % 4]) for i, q in enumerate(queries)]
    backend = reranker.runtime.backend
    assert isinstance(backend, Rerankers)
    assert backend._batcher is not None
    before = backend._batcher.batches
    together = await asyncio.gather(
        *(rerank(reranker, q, DOCUMENTS[: 2 + i % 4]) for i, q in enumerate(queries))
    )
    assert backend._batcher.batches - before < len(queries) // 2
    for own, got in zip(alone, together, strict=True):
        assert [r.index for r in got.results] == [r.index for r in own.results]
        assert [r.relevance_score for r in got.results] == pytest.approx(
            [r.relevance_score for r in own.results], abs=1e-5
        )
        assert got.usage.total_tokens == own.usage.total_tokens


@pytest.mark.parametrize(
    ("query", "documents", "top_n", "needle"),
    [
        (QUERY, [], 0, "document"),
        ("", DOCUMENTS, 0, "query"),
        (QUERY, DOCUMENTS, -1, "top_n"),
    ],
)
async def test_bad_requests_are_invalid_argument(
    reranker: Served, query: str, documents: list[str], top_n: int, needle: str
) -> None:
    with pytest.raises(GRPCError) as err:
        await rerank(reranker, query, documents, top_n)
    assert err.value.status == Status.INVALID_ARGUMENT
    assert needle in (err.value.message or "")
    assert len((await rerank(reranker, QUERY, DOCUMENTS[:2])).results) == 2  # still serving


async def test_models_it_cannot_serve_are_refused_and_the_loaded_one_keeps_serving(reranker: Served) -> None:
    for model in ("/no/such/reranker", "bge-reranker.gguf"):
        result = await reranker.client.backend.LoadModel(pb.ModelOptions(Model=model))
        assert not result.success
        assert model in result.message
    assert len((await rerank(reranker, QUERY, DOCUMENTS)).results) == len(DOCUMENTS)


async def test_an_api_reranker_type_is_refused_naming_the_served_ones(cross_encoder: Path) -> None:
    async with serving(Rerankers()) as served:
        result = await served.client.backend.LoadModel(
            pb.ModelOptions(Model=str(cross_encoder), Type="cohere")
        )
        assert not result.success
        assert "'cohere'" in result.message
        assert "'t5'" in result.message


async def test_a_t5_reranker_runs_through_the_rerankers_library(tmp_path: Path) -> None:
    from rerankers import Reranker

    folder = build_tiny_t5_ranker(tmp_path)
    async with serving(Rerankers()) as served:
        loaded = await served.client.backend.LoadModel(pb.ModelOptions(Model=str(folder), Type="t5"))
        assert loaded.success, loaded.message
        assert "T5Ranker" in loaded.message
        result = await rerank(served, QUERY, DOCUMENTS, top_n=3)
    library = Reranker(str(folder), model_type="t5", verbose=0, device="cpu")
    expected = library.rank(query=QUERY, docs=DOCUMENTS, doc_ids=list(range(len(DOCUMENTS))))
    best = [(int(r.document.doc_id), float(r.score)) for r in expected.results][:3]
    assert [r.index for r in result.results] == [i for i, _ in best]
    assert [r.relevance_score for r in result.results] == pytest.approx([s for _, s in best], abs=1e-5)
    prompts = [library.inputs_template.format(query=QUERY, text=d) for d in DOCUMENTS]
    assert result.usage.total_tokens == sum(len(library.tokenizer(p)["input_ids"]) for p in prompts)


async def test_an_api_reranker_type_leaves_the_loaded_model_serving(cross_encoder: Path) -> None:
    async with serving(Rerankers()) as served:
        assert (await served.client.backend.LoadModel(pb.ModelOptions(Model=str(cross_encoder)))).success
        result = await served.client.backend.LoadModel(
            pb.ModelOptions(Model=str(cross_encoder), Type="cohere")
        )
        assert not result.success
        assert "'cohere'" in result.message
        assert len((await rerank(served, QUERY, DOCUMENTS)).results) == len(DOCUMENTS)
