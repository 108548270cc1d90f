"""Stop strings in streamed text: nothing of a stop string is sent, and text that may begin one is held
back until the next piece shows whether it does. Works on str, and on bytes for engines that stream
bytes (a character may be split between tokens)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import AnyStr


def partial_suffix(text: AnyStr, marker: AnyStr) -> int:
    """Length of the longest end of `text` that is a proper start of `marker` (text to hold back)."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:size]):
            return size
    return 0


def release(held: AnyStr, stops: Sequence[AnyStr]) -> tuple[int, bool]:
    """How much of `held` can go out now, and whether a stop string was found (cut before the first)."""
    first = min((at for s in stops if s and (at := held.find(s)) >= 0), default=-1)
    if first >= 0:
        return first, True
    return len(held) - max((partial_suffix(held, s) for s in stops if s), default=0), False


class StopText:
    """Text fed piece by piece, given out without any part of a stop string."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """What may go out after `text`, and whether a stop string ended the text."""
        self.held += text
        cut, stopped = release(self.held, self.stops)
        out, self.held = self.held[:cut], "" if stopped else self.held[cut:]
        return out, stopped

    def flush(self) -> str:
        """At the end of the text: what was held back, which began no stop string after all."""
        out, self.held = self.held, ""
        return out
