"""The rerankers engine: the only module that imports torch, sentence-transformers and rerankers.

Imported at LoadModel. Cross-encoders run through sentence-transformers' CrossEncoder, every query and
document pair of a batch of requests in one forward pass per chunk; other model types LocalAI's configs
name (`type: t5`, `mxbaiv2`, ...) run through the rerankers library. Plain Python in and out.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sentence_transformers import CrossEncoder

from localfleet.errors import EngineFailure, NotFound, Refused
from localfleet.window import Window

#: pairs per forward pass: bounds activation memory when a batch holds many long documents
CHUNK = 64


@dataclass(frozen=True)
class LoadSpec:
    path: str
    model_type: str = ""  # "" = a cross-encoder; otherwise the rerankers library's model_type
    lang: str = "en"
    device: str = ""  # "" = cuda when available, else cpu
    trust_remote_code: bool = False


@dataclass(frozen=True)
class Scored:
    """One request's answer: a score per document (request order) and the tokens the model read."""

    scores: list[float]
    tokens: int


def load(spec: LoadSpec) -> Ranker:
    local = Path(spec.path)
    if local.is_absolute() and not local.exists():
        raise NotFound(f"model folder {spec.path!r} does not exist on this machine")
    device = spec.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        if not spec.model_type:
            model = CrossEncoder(
                spec.path,
                device=device,
                local_files_only=local.is_dir(),
                trust_remote_code=spec.trust_remote_code,
            )
            return CrossEncoderRanker(model.eval())
        from rerankers import Reranker

        ranker = Reranker(spec.path, model_type=spec.model_type, lang=spec.lang, verbose=0, device=device)
    except OSError as exc:
        raise NotFound(
            f"cannot load {spec.path!r}: {exc}. Give a model folder on this machine or a model id already "
            "in the Hugging Face cache"
        ) from None
    if ranker is None:  # the library prints why and returns None for a family without a default
        raise Refused(f"the rerankers library cannot load {spec.path!r} as model_type {spec.model_type!r}")
    return LibraryRanker(ranker, spec.model_type)


class Ranker:
    name = ""
    #: what the model reads of a query or a document; by default texts are not cut
    window = Window(None, 0)

    def fit(self, query: str, docs: list[str]) -> tuple[str, list[str]]:
        """The query and documents cut to what the model reads of each (a prefix giving the same tokens).

        Each is cut on its own: truncating a pair keeps a prefix of each, never more than the window.
        """
        return self.window.fit(query), [self.window.fit(doc) for doc in docs]

    def score(self, requests: list[tuple[str, list[str]]], stop: threading.Event) -> list[Scored]:
        raise NotImplementedError

    def nbytes(self) -> int:
        return 0


class CrossEncoderRanker(Ranker):
    def __init__(self, model: CrossEncoder) -> None:
        self.model = model
        self.name = f"CrossEncoder({type(model.model).__name__ if hasattr(model, 'model') else 'model'})"
        self.activation = getattr(model, "activation_fn", None)  # what CrossEncoder.predict applies
        if model.max_seq_length:
            self.window = Window(model.tokenizer, model.max_seq_length)

    def score(self, requests: list[tuple[str, list[str]]], stop: threading.Event) -> list[Scored]:
        """Every pair of every request of the batch, in chunks of CHUNK pairs."""
        pairs = [(query, doc) for query, docs in requests for doc in docs]
        scores: list[float] = []
        tokens: list[int] = []
        with torch.inference_mode():
            for start in range(0, len(pairs), CHUNK):
                if stop.is_set():
                    raise EngineFailure("rerank batch stopped: every caller went away")
                features = self.model.preprocess(pairs[start : start + CHUNK])
                tokens += features["attention_mask"].sum(1).tolist()
                moved = {k: v.to(self.model.device) if hasattr(v, "to") else v for k, v in features.items()}
                logits = self.model(moved)["scores"]
                if self.activation is not None:
                    logits = self.activation(logits)
                if logits.dim() > 1 and logits.shape[-1] > 1:
                    raise EngineFailure(
                        f"the model has {logits.shape[-1]} labels; a reranking cross-encoder has one score"
                    )
                scores += logits.reshape(-1).float().cpu().tolist()
        out: list[Scored] = []
        at = 0
        for _, docs in requests:
            out.append(Scored(scores[at : at + len(docs)], sum(tokens[at : at + len(docs)])))
            at += len(docs)
        return out

    def nbytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())


class LibraryRanker(Ranker):
    """A rerankers-library model: it has no cross-request batching, so a batch runs request by request."""

    def __init__(self, ranker: Any, model_type: str) -> None:
        self.ranker = ranker
        self.name = f"rerankers {type(ranker).__name__} ({model_type})"
        self.tokenizer = getattr(ranker, "tokenizer", None)

    def score(self, requests: list[tuple[str, list[str]]], stop: threading.Event) -> list[Scored]:
        out: list[Scored] = []
        for query, docs in requests:
            if stop.is_set():
                raise EngineFailure("rerank batch stopped: every caller went away")
            ranked = self.ranker.rank(query=query, docs=docs, doc_ids=list(range(len(docs))))
            by_id = {int(r.document.doc_id): _scalar(r.score) for r in ranked.results}
            out.append(Scored([by_id[i] for i in range(len(docs))], self._tokens(query, docs)))
        return out

    def _tokens(self, query: str, docs: list[str]) -> int:
        """What the model read: the ranker's own prompt (monoT5's template) or the query/document pair."""
        if self.tokenizer is None:  # a ranker without a tokenizer: count words
            return sum(len(query.split()) + len(doc.split()) for doc in docs)
        template = getattr(self.ranker, "inputs_template", None)
        if isinstance(template, str):
            texts = [template.format(query=query, text=doc) for doc in docs]
            return sum(len(ids) for ids in self.tokenizer(texts, truncation=True)["input_ids"])
        return sum(len(self.tokenizer(query, doc, truncation=True)["input_ids"]) for doc in docs)

    def nbytes(self) -> int:
        model = getattr(self.ranker, "model", None)
        params = getattr(model, "parameters", None)
        return sum(p.numel() * p.element_size() for p in params()) if callable(params) else 0


def _scalar(score: Any) -> float:
    if isinstance(score, list | tuple):  # a two-label model: the "relevant" logit
        return float(score[-1])
    return float(score)
