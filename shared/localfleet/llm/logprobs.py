"""`Reply.logprobs` as core reads it: `{"content": [...]}`, OpenAI's shape, one entry a token."""

from __future__ import annotations

import json
from typing import Any


class LogprobsJson:
    """One call's log-probabilities: each entry JSON-encoded once, as it comes."""

    def __init__(self) -> None:
        self._encoded: list[str] = []

    def add(self, entries: list[dict[str, Any]], *, last: bool = False) -> bytes:
        """A stream chunk's `logprobs`: its own tokens, and on the last chunk all of them (core keeps the
        last it sees); empty when there is nothing to send."""
        new = [json.dumps(entry, ensure_ascii=False) for entry in entries]
        self._encoded.extend(new)
        return _document(self._encoded if last else new)

    def whole(self) -> bytes:
        """Every token's entry (Predict's reply); empty when none was asked for."""
        return _document(self._encoded)


def _document(encoded: list[str]) -> bytes:
    """The bytes json.dumps gives for `{"content": [...]}`, built from entries encoded one by one."""
    return ('{"content": [' + ", ".join(encoded) + "]}").encode() if encoded else b""
