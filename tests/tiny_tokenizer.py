"""A byte-level BPE tokenizer trained on local text, for the tiny models the LLM backends' tests build
(tokenizers and transformers only: every such test environment has them)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A man is eating food. A man is eating a piece of bread. The girl is carrying a baby.",
    "Hello, how are you today? I am fine, thank you. What is the weather like?",
    "user assistant system tool: the model answers the question in one short sentence.",
]
#: text the tokenizer is trained on, so common English words are single tokens
CORPUS = SENTENCES * 20


def build_tokenizer(
    folder: Path,
    template: str,
    *,
    added: Sequence[str] = (),
    special: Sequence[str] = (),
    corpus: Sequence[str] = CORPUS,
) -> Any:
    """A byte-level BPE trained on `corpus` with `added` tokens (and `special` ones) and a chat template,
    saved into `folder` as a Hugging Face tokenizer; returned as loaded."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(corpus, trainer)
    bpe.add_tokens([AddedToken(t, special=False, normalized=False) for t in added])
    bpe.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>", add_bos_token=True
    )
    tokenizer.chat_template = template
    tokenizer.save_pretrained(folder)
    return tokenizer
