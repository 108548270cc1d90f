"""`localfleet call ADDR rerank` against the rerankers backend (tests/cli_run.py)."""

from __future__ import annotations

import json

import pytest

from localfleet.proto import backend_pb2 as pb
from localfleet.testing import Served
from tests.cli_run import cli
from tests.rerankers.test_rerank import DOCUMENTS, QUERY, cross_encoder, reranker

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]

__all__ = ["cross_encoder", "reranker"]  # the backend's own fixtures, served here as there


async def test_rerank_prints_the_ranking_best_first_and_honours_top_n(reranker: Served) -> None:
    ran = await cli(reranker.addr, "rerank", QUERY, *DOCUMENTS)
    assert ran.code == 0, ran.err
    ranked = [json.loads(line) for line in ran.lines]
    direct = await reranker.client.backend.Rerank(pb.RerankRequest(query=QUERY, documents=DOCUMENTS))
    assert [r["index"] for r in ranked] == [r.index for r in direct.results]
    assert [r["relevance_score"] for r in ranked] == pytest.approx(
        [r.relevance_score for r in direct.results], abs=1e-6
    )
    assert sorted(r["index"] for r in ranked) == list(range(len(DOCUMENTS)))
    assert all(r["text"] == DOCUMENTS[r["index"]] for r in ranked)
    scores = [r["relevance_score"] for r in ranked]
    assert scores == sorted(scores, reverse=True)
    assert len(set(scores)) > 1
    best_two = await cli(reranker.addr, "rerank", QUERY, *DOCUMENTS, "--top-n", "2")
    assert [json.loads(line) for line in best_two.lines] == ranked[:2]
