"""localfleet rerankers backend: cross-encoder reranking for LocalAI's Rerank."""
