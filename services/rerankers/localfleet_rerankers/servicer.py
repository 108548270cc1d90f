"""rerankers: LocalAI's Rerank over cross-encoders, with concurrent requests batched into one pass.

Results come back as core passes them to the user: sorted by descending relevance_score, cut to top_n
(0 = all), each with the index of its document in the request; usage counts the tokens the model read.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from localfleet import hub
from localfleet.backend import Backend, ModelRef, folder_refusal
from localfleet.batching import Batcher, BatchOptions
from localfleet.call import Call
from localfleet.errors import BadInput, NotLoaded
from localfleet.proto import backend_pb2 as pb

if TYPE_CHECKING:
    from localfleet_rerankers.engine import Ranker, Scored


#: the most one batch holds, in query-document pairs cut to the model's window (one forward pass's
#: worth): a request with more runs in a batch of its own, and others do not wait behind it in one
BATCH_PAIRS = 64

#: ModelOptions.Type -> the rerankers library's model_type ("" = sentence-transformers' CrossEncoder)
TYPES = {
    "": "",
    "cross-encoder": "",
    "crossencoder": "",
    "sentence-transformers": "",
    "t5": "t5",
}


class RerankersOptions(BatchOptions):
    device: str | None = Field(None, description="cpu, cuda, cuda:1; default cuda when available")


class Rerankers(Backend):
    name = "rerankers"
    Options = RerankersOptions
    # Concurrent Rerank calls must be admitted together for the batcher to gather them.
    default_concurrency = 32

    def __init__(self) -> None:
        self._ranker: Ranker | None = None
        self._batcher: Batcher[tuple[str, list[str]], Scored] | None = None

    def refuse(self, model: ModelRef) -> str | None:
        if model.type.lower() not in TYPES:
            served = ", ".join(repr(t) for t in TYPES if t)
            return f"Type {model.type!r} is not served here; leave it empty or use one of {served}"
        # A hub id that is neither here nor fetchable is refused now, not after the hub client's retries.
        return folder_refusal(model, "a reranking model") or hub.refusal(model.path)

    def load(self, model: ModelRef, options: BaseModel, request: pb.ModelOptions) -> str:
        assert isinstance(options, RerankersOptions)
        model_type = TYPES[model.type.lower()]  # refuse() checked it
        from localfleet_rerankers.engine import LoadSpec, load  # torch: imported with the first model

        ranker = load(
            LoadSpec(
                path=model.path,
                model_type=model_type,
                lang=request.PipelineType or "en",  # LocalAI's rerankers backend reads the language here
                device=options.device or "",
                trust_remote_code=request.TrustRemoteCode,
            )
        )
        limits = options.batch_limits()
        self._ranker = ranker
        self._batcher = Batcher(
            ranker.score,
            limits,
            name="rerankers",
            cost=_cost,
            max_cost=BATCH_PAIRS * 2 * ranker.window.chars or math.inf,
        )
        return f"{ranker.name}; requests batched up to {limits.max_size} within {limits.window * 1e3:g} ms"

    def unload(self) -> str:
        if self._batcher is not None:
            self._batcher.close()
        self._ranker, self._batcher = None, None
        return "model released"

    def memory(self) -> dict[str, int]:
        ranker = self._ranker
        return {"weights": ranker.nbytes()} if ranker is not None else {}

    async def Rerank(self, request: pb.RerankRequest, call: Call) -> pb.RerankResult:
        if not request.query:
            raise BadInput("Rerank needs a query")
        if not request.documents:
            raise BadInput("Rerank needs at least one document in documents")
        if request.top_n < 0:
            raise BadInput(f"top_n must be >= 0 (0 = all documents), got {request.top_n}")
        if self._batcher is None or self._ranker is None:
            raise NotLoaded()
        documents = list(request.documents)
        query, texts = request.query, documents
        window = self._ranker.window
        if not (window.cheap(query) and all(window.cheap(doc) for doc in documents)):
            query, texts = await call.run(self._ranker.fit, query, documents)
        scored = await self._batcher.submit((query, texts), stop=call.stop)
        # Stable: documents with equal scores keep their request order.
        order = sorted(range(len(documents)), key=lambda i: scored.scores[i], reverse=True)
        if request.top_n:
            order = order[: request.top_n]
        return pb.RerankResult(
            usage=pb.Usage(total_tokens=scored.tokens, prompt_tokens=scored.tokens),
            results=[
                pb.DocumentResult(index=i, text=documents[i], relevance_score=scored.scores[i]) for i in order
            ],
        )


def _cost(request: tuple[str, list[str]]) -> float:
    """What a request costs a batch: the characters of its query-document pairs."""
    query, docs = request
    return len(query) * len(docs) + sum(map(len, docs))
