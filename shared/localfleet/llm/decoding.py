"""Sampled token ids into `TextStep`s, for engines that hand out one token at a time (mlx-lm, mlx-vlm):
end of text (unless ignored), stop strings held back, the caller's stop flag, the finish reason and the
timings, the same for every such engine."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Protocol

from localfleet.llm.replies import TextStep
from localfleet.llm.stops import StopText


class Detokenizer(Protocol):
    """An engine's incremental detokenizer."""

    def add(self, token: int) -> str:
        """The text `token` completes (may be empty while a character or word is still partial)."""
        ...

    def finish(self) -> str:
        """What is still held at the end."""
        ...


def text_steps(
    tokens: Iterable[int],
    detokenizer: Detokenizer,
    *,
    eos: Collection[int],
    ignore_eos: bool,
    stop_strings: tuple[str, ...],
    stop: threading.Event,
    on_token: Callable[[], None] = lambda: None,
) -> Iterator[TextStep]:
    """Steps of text from `tokens`, which ends at the token budget ("length"). An end-of-text token ends
    it ("stop") unless `ignore_eos`, when it is counted and not written; a stop string ends it before the
    string ("stop"); `stop` set by the caller ends it within one token ("cancelled"). The last step has
    no text and carries the finish reason, the prompt's time (to the first token) and the generation's."""
    held = StopText(stop_strings)
    started = time.perf_counter()
    first = 0.0
    produced = 0
    finish = "length"
    matched = False
    for token in tokens:
        first = first or time.perf_counter()
        produced += 1
        on_token()
        if token in eos and not ignore_eos:
            finish = "stop"
            break
        out, matched = held.feed(detokenizer.add(token) if token not in eos else "")
        if out:
            yield TextStep(out, produced)
        if matched or stop.is_set():
            finish = "stop" if matched else "cancelled"
            break
    if not matched:  # what the detokenizer still holds, then what was held for stop strings
        tail, matched = held.feed(detokenizer.finish())
        rest = tail + ("" if matched else held.flush())
        finish = "stop" if matched else finish
        if rest:
            yield TextStep(rest, produced)
    done = time.perf_counter()
    first = first or done
    yield TextStep("", produced, finish, (first - started) * 1e3, (done - first) * 1e3)
