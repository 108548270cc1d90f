"""localfleet.llm.decoding: token ids into text steps, the loop mlx and mlx-vlm share."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from localfleet.llm.decoding import text_steps
from localfleet.llm.replies import TextStep

EOS = 0
WORDS = {1: "Hel", 2: "lo", 3: " wor", 4: "ld", 5: "!"}


class _Letters:
    """A detokenizer that holds one token back, as real ones hold partial characters."""

    def __init__(self) -> None:
        self.held = ""

    def add(self, token: int) -> str:
        out, self.held = self.held, WORDS[token]
        return out

    def finish(self) -> str:
        out, self.held = self.held, ""
        return out


def _run(
    tokens: list[int], *, ignore_eos: bool = False, stop_strings: tuple[str, ...] = ()
) -> list[TextStep]:
    steps = text_steps(
        tokens,
        _Letters(),
        eos={EOS},
        ignore_eos=ignore_eos,
        stop_strings=stop_strings,
        stop=threading.Event(),
    )
    return list(steps)


def test_the_budget_ends_with_length_and_the_held_text_comes_out() -> None:
    steps = _run([1, 2, 3, 4])
    assert "".join(s.text for s in steps) == "Hello world"
    assert (steps[-1].text, steps[-1].tokens, steps[-1].finish) == ("", 4, "length")


def test_end_of_text_stops_unless_ignored_then_it_is_counted_not_written() -> None:
    assert [(s.text, s.finish) for s in _run([1, 2, EOS, 3])][-1] == ("", "stop")
    assert "".join(s.text for s in _run([1, 2, EOS, 3])) == "Hello"
    ignored = _run([1, EOS, 2], ignore_eos=True)
    assert "".join(s.text for s in ignored) == "Hello"
    assert ignored[-1].tokens == 3


def test_a_stop_string_ends_the_text_before_it() -> None:
    steps = _run([1, 2, 3, 4, 5], stop_strings=(" wo",))
    assert "".join(s.text for s in steps) == "Hello"
    assert steps[-1].finish == "stop"


def test_the_callers_stop_ends_it_within_one_token() -> None:
    stop = threading.Event()
    seen: list[int] = []

    def tokens() -> Iterator[int]:
        for token in (1, 2, 3, 4, 5):
            seen.append(token)
            if token == 2:
                stop.set()
            yield token

    steps = list(text_steps(tokens(), _Letters(), eos={EOS}, ignore_eos=False, stop_strings=(), stop=stop))
    assert seen == [1, 2]
    assert steps[-1].finish == "cancelled"
