"""A tiny random Llama built in the test session: transformers weights, and an f32 GGUF of the same.

The tokenizer is a SentencePiece BPE model trained here on generated text (byte fallback, no normalisation,
as llama.cpp's SPM tokenizer reads it); the GGUF is written with the `gguf` package's writer, tensor by
tensor, with the rotary permutation of Q and K that llama.cpp's own converter applies.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HIDDEN, FFN, LAYERS, HEADS, KV_HEADS, CONTEXT = 64, 128, 2, 4, 2, 256
WORDS = (
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "paris",
    "france",
    "capital",
    "city",
    "river",
    "seine",
    "history",
    "people",
    "music",
    "art",
    "light",
    "night",
    "morning",
    "water",
    "bread",
    "food",
    "man",
    "woman",
    "child",
    "eats",
    "carries",
)


@dataclass
class TinyLlama:
    gguf: Path
    tokenizer: Any  # sentencepiece.SentencePieceProcessor
    model: Any  # transformers.LlamaForCausalLM


def build(folder: Path) -> TinyLlama:
    import numpy as np
    import sentencepiece as spm
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    rng = random.Random(0)
    lines = [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))) + rng.choice(".!?,")
        for _ in range(3000)
    ]
    lines += ["Héllo wörld, café déjà vu. 東京 123 456", "Tabs\tand  double  spaces"]
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(lines), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(folder / "tokenizer"),
        vocab_size=400,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        split_digits=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    tokenizer = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    vocab = tokenizer.vocab_size()

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=CONTEXT,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=False,
        initializer_range=0.2,  # peaked enough that greedy choices are not float ties
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(config)
    model.eval()  # type: ignore[no-untyped-call]
    weights = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    path = folder / "tiny-llama-f32.gguf"
    _write_gguf(path, tokenizer, weights, np)
    return TinyLlama(path, tokenizer, model)


def _permute(w: Any, heads: int) -> Any:
    """HF's rotary layout to llama.cpp's (as convert_hf_to_gguf.py does for Q and K)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _write_gguf(path: Path, tokenizer: Any, weights: dict[str, Any], np: Any) -> None:
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(10000.0)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    vocab = tokenizer.vocab_size()
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    types = []
    for i in range(vocab):
        kind = gguf.TokenType.NORMAL
        if tokenizer.is_unknown(i):
            kind = gguf.TokenType.UNKNOWN
        elif tokenizer.is_control(i):
            kind = gguf.TokenType.CONTROL
        elif tokenizer.is_unused(i):
            kind = gguf.TokenType.UNUSED
        elif tokenizer.is_byte(i):
            kind = gguf.TokenType.BYTE
        types.append(kind)
    writer.add_token_list([tokenizer.id_to_piece(i).encode() for i in range(vocab)])
    writer.add_token_scores([tokenizer.get_score(i) for i in range(vocab)])
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)

    writer.add_tensor("token_embd.weight", weights["model.embed_tokens.weight"])
    for i in range(LAYERS):
        hf = f"model.layers.{i}."
        blk = f"blk.{i}."
        writer.add_tensor(blk + "attn_norm.weight", weights[hf + "input_layernorm.weight"])
        writer.add_tensor(blk + "attn_q.weight", _permute(weights[hf + "self_attn.q_proj.weight"], HEADS))
        writer.add_tensor(blk + "attn_k.weight", _permute(weights[hf + "self_attn.k_proj.weight"], KV_HEADS))
        writer.add_tensor(blk + "attn_v.weight", weights[hf + "self_attn.v_proj.weight"])
        writer.add_tensor(blk + "attn_output.weight", weights[hf + "self_attn.o_proj.weight"])
        writer.add_tensor(blk + "ffn_norm.weight", weights[hf + "post_attention_layernorm.weight"])
        writer.add_tensor(blk + "ffn_gate.weight", weights[hf + "mlp.gate_proj.weight"])
        writer.add_tensor(blk + "ffn_up.weight", weights[hf + "mlp.up_proj.weight"])
        writer.add_tensor(blk + "ffn_down.weight", weights[hf + "mlp.down_proj.weight"])
    writer.add_tensor("output_norm.weight", weights["model.norm.weight"])
    writer.add_tensor("output.weight", np.ascontiguousarray(weights["lm_head.weight"]))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


LORA_TARGETS = {
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}


def write_lora(path: Path, model: Any, *, rank: int, alpha: float, seed: int) -> dict[str, Any]:
    """A random LoRA adapter GGUF for the tiny model; returns each HF weight's delta at scale 1."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(seed)
    weights = model.state_dict()
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", alpha)
    deltas: dict[str, Any] = {}
    for i in range(LAYERS):
        for gguf_name, hf_name in LORA_TARGETS.items():
            out_dim, in_dim = weights[hf_name.format(i=i)].shape
            a = rng.normal(0, 0.3, (rank, in_dim)).astype(np.float32)
            b = rng.normal(0, 0.3, (out_dim, rank)).astype(np.float32)
            writer.add_tensor(gguf_name.format(i=i) + ".lora_a", a)
            writer.add_tensor(gguf_name.format(i=i) + ".lora_b", b)
            deltas[hf_name.format(i=i)] = (b @ a) * (alpha / rank if alpha else 1.0)  # as llama.cpp scales
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return deltas
