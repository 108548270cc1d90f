"""Texts cut to the model's window tokenize, once truncated, exactly as the whole text does.

On the two tokenizer kinds the suite has: MiniLM's WordPiece (BERT: whitespace and punctuation words,
one [UNK] for a word over 100 characters) and the tiny Llama's byte-level BPE.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from localfleet.window import CHARS_PER_TOKEN, Window

PROSE = "A man is eating a piece of bread. The girl is carrying a baby. "
#: texts whose window comes from far more, or far fewer, characters per token than prose
TEXTS = {
    "prose": PROSE * 100,
    "a run of spaces": "hello " + " " * 20_000 + "world " * 600,
    "words over 100 characters": ("x" * 150 + " ") * 400,
    "words just under 100": ("y" * 99 + " ") * 400,
    "CJK": "我们今天去公园散步然后吃饭" * 500,
    "control characters": "a\u0000\u0001b " * 3000,
    "one long word": "abcdefghij" * 5000,
    "blank lines": "line\n\n\n   \n" * 2000,
}
#: what follows: words, text glued to the last word, a run of one letter (each past the pieces tried)
TAILS = ["", " and then much more" * 2_000, "glued" * 8_000, "z" * 40_000]


@pytest.fixture(scope="module")
def tokenizers(minilm: str, tiny_llama: Path) -> dict[str, Any]:
    from transformers import AutoTokenizer

    return {
        "wordpiece": AutoTokenizer.from_pretrained(minilm, local_files_only=True),
        "byte-level BPE": AutoTokenizer.from_pretrained(tiny_llama, local_files_only=True),
    }


@pytest.mark.parametrize("kind", ["wordpiece", "byte-level BPE"])
@pytest.mark.parametrize("name", sorted(TEXTS))
def test_a_cut_text_truncates_to_the_same_tokens_as_the_whole(
    tokenizers: dict[str, Any], kind: str, name: str
) -> None:
    tokenizer, tokens = tokenizers[kind], 256
    window = Window(tokenizer, tokens)
    for tail in TAILS:
        whole = TEXTS[name] + tail
        cut = window.fit(whole)
        assert whole.startswith(cut)
        expected = tokenizer(whole, truncation=True, max_length=tokens)["input_ids"]
        assert tokenizer(cut, truncation=True, max_length=tokens)["input_ids"] == expected, (kind, name, tail)


def test_prose_is_cut_to_a_few_characters_per_token_of_the_window(tokenizers: dict[str, Any]) -> None:
    window = Window(tokenizers["wordpiece"], 256)
    assert len(window.fit(PROSE * 100_000)) == 256 * CHARS_PER_TOKEN  # 6 MB in, 2 KB to the tokenizer
    assert window.fit(PROSE) == PROSE  # within the window: untouched, never encoded
    assert window.cheap(PROSE)
    assert not window.cheap(PROSE * 100)


def test_without_a_fast_tokenizer_nothing_is_cut() -> None:
    window = Window(object(), 256)
    assert window.fit(PROSE * 1000) == PROSE * 1000
    assert window.cheap(PROSE * 1000)
