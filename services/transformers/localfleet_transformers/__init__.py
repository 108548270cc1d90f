"""localfleet transformers backend: embeddings and causal-LM generation on Hugging Face transformers."""
