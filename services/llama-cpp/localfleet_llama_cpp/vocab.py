"""The model's vocabulary: text to token ids and back, each token's bytes, the end-of-generation tokens,
and the size check that keeps huge texts away from llama.cpp's tokenizer."""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import llama_cpp

from localfleet.errors import BadInput, EngineFailure
from localfleet_llama_cpp.native import Native


class Vocab:
    """One model's tokens, read through llama.cpp's vocabulary functions (pieces and counts cached)."""

    def __init__(self, native: Native) -> None:
        self._native = native
        self._llm = native.llm
        self.pointer = native.vocab  # what llama.cpp's vocabulary functions take
        self.n_vocab = native.n_vocab
        self._pieces: dict[int, bytes] = {}
        self._longest_piece = 0  # bytes of the vocabulary's longest token text, counted when first needed
        self._piece_buf = ctypes.create_string_buffer(256)
        self._eog: list[int] | None = None
        self.bos_text = self.token_text(self._llm.token_bos())
        self._add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.pointer))

    def token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self._native.token_text(token)

    def piece(self, token: int) -> bytes:
        """The bytes one token stands for (special tokens render as nothing), cached per token."""
        cached = self._pieces.get(token)
        if cached is None:
            n = llama_cpp.llama_token_to_piece(self.pointer, token, self._piece_buf, 256, 0, False)
            cached = self._piece_buf.raw[: max(n, 0)]
            self._pieces[token] = cached
        return cached

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        # A template that writes the BOS itself gets no second one from the tokenizer.
        add_bos = add_special and self._add_bos and not (self.bos_text and text.startswith(self.bos_text))
        return self._llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    def check_tokens(self, field: str, tokens: Sequence[int]) -> None:
        """Token ids from a client must lie in the vocabulary: llama.cpp reads its tables at them."""
        for token in tokens:
            if not 0 <= token < self.n_vocab:
                raise BadInput(f"{field}: token {token} is outside the vocabulary (0..{self.n_vocab - 1})")

    def detokenize(self, tokens: Sequence[int]) -> str:
        self.check_tokens("tokens", tokens)
        # llama.cpp's own detokenizer: special tokens rendered, an SPM dummy-prefix space dropped.
        ids = (llama_cpp.llama_token * len(tokens))(*tokens)
        size = max(64, 8 * len(tokens))
        for _ in range(2):
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_detokenize(self.pointer, ids, len(tokens), buf, size, False, True)
            if n >= 0:
                return buf.raw[:n].decode("utf-8", errors="replace")
            size = -n
        raise EngineFailure(f"llama.cpp could not detokenize {len(tokens)} tokens")

    def check_size(self, what: str, text: str, room: int) -> None:
        """Refuse text too long for `room` tokens before tokenizing it: llama.cpp's tokenizer takes
        minutes over megabytes (20 MB of spaces: over 5 minutes), holding the model all along."""
        size = len(text.encode("utf-8", errors="surrogatepass"))
        if size <= room:  # no token stands for less than one byte: nothing to count
            return
        most = room * self.longest()
        if size > most:
            raise BadInput(
                f"{what} is {size} bytes, more than {room} tokens can hold ({most} bytes: at most "
                f"{self.longest()} a token for this model): shorten it or load the model with a larger "
                "ContextSize"
            )

    def longest(self) -> int:
        """The most bytes one token stands for, special tokens' text included (counted once: ~0.7 s)."""
        if not self._longest_piece:
            buf = ctypes.create_string_buffer(1024)
            to_piece = llama_cpp.llama_token_to_piece
            pieces = (to_piece(self.pointer, t, buf, len(buf), 0, True) for t in range(self.n_vocab))
            self._longest_piece = max(pieces, default=1)
        return self._longest_piece

    def eog_tokens(self) -> list[int]:
        if self._eog is None:
            is_eog = llama_cpp.llama_vocab_is_eog
            self._eog = [t for t in range(self.n_vocab) if is_eog(self.pointer, t)]
        return self._eog
