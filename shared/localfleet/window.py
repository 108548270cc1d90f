"""Texts cut to what a model reads, before its tokenizer pays for the rest.

A model reads at most its window of tokens, yet a tokenizer encodes the whole text before it truncates:
a 40 MB text is ten million tokens, a minute and gigabytes, for a model that keeps 256 of them.
`Window.fit` hands the tokenizer a prefix that gives the same first tokens instead:

    window = Window(tokenizer, tokens=256)   # a Hugging Face fast tokenizer and the model's window
    features = tokenizer(window.fit(text), truncation=True, max_length=256)   # as with the whole text

It encodes a piece of CHARS_PER_TOKEN characters per token of the window and takes it once the window's
tokens are settled: more tokens follow them and their word is not one of the last two of the piece, so
nothing past the cut can change them (a tokenizer splits text into words and encodes each on its own).
A piece whose tokens are not settled (long runs of characters the tokenizer drops, such as whitespace)
grows GROWTH times until it is the whole text, so the worst case costs a third more than the whole text
did. Pure Python over the tokenizer's own Rust encoder: no heavy import here.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

#: characters per token of the first piece tried: twice what English prose takes, more than CJK takes
CHARS_PER_TOKEN = 8
#: how much larger each next piece is, when a piece's tokens are not settled
GROWTH = 4
#: inside one long word (CJK text under a sentencepiece tokenizer, a run of letters with no break),
#: tokens that end this many characters before the cut are settled: BERT turns a word of over 100
#: characters into one [UNK], so nearer than that a cut could still change them
SETTLED_CHARS = 256


class Window:
    """The first `tokens` tokens of a text, as `tokenizer` encodes it, from as short a prefix as will do."""

    def __init__(self, tokenizer: Any, tokens: int) -> None:
        self.tokens = tokens
        self._encoder = _own_encoder(tokenizer) if tokens > 0 else None

    @property
    def chars(self) -> int:
        """The characters of the first piece tried: about the length of a text cut to the window."""
        return self.tokens * CHARS_PER_TOKEN

    def cheap(self, text: str) -> bool:
        """Whether `fit(text)` answers without encoding anything: otherwise run it off the event loop."""
        return self._encoder is None or len(text) <= self.chars

    def fit(self, text: str) -> str:
        """`text`, or the shortest piece tried of it whose first `tokens` tokens are those of `text`."""
        if self._encoder is None:
            return text
        size = self.chars
        while size < len(text):
            piece = text[:size]
            if self._settled(piece):
                return piece
            size *= GROWTH
        return text

    def _settled(self, piece: str) -> bool:
        assert self._encoder is not None
        encoding = self._encoder.encode(piece, add_special_tokens=False)
        last = self.tokens - 1
        if len(encoding.ids) <= self.tokens:
            return False
        words = encoding.word_ids
        word, tail = words[last], words[-1]
        if word is not None and tail is not None and word < tail - 1:
            return True
        end: int = encoding.offsets[last][1]
        return end + SETTLED_CHARS <= len(piece)


def _own_encoder(tokenizer: Any) -> Any:
    """A copy of the fast tokenizer's Rust encoder, with no truncation or padding.

    A copy, so encoding here from any thread never meets the model's tokenizer while its caller sets
    truncation on it (the Rust object refuses to be changed while borrowed: "Already borrowed").
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        log.info("%s is not a fast tokenizer: texts are not cut to the window", type(tokenizer).__name__)
        return None
    encoder = type(backend).from_str(backend.to_str())
    encoder.no_truncation()
    encoder.no_padding()
    return encoder
