"""localfleet vllm backend: LLM generation and embeddings on vLLM's async engine."""
