"""The text splitter every TTS engine runs on: bounded pieces, broken where speech pauses, nothing lost."""

from __future__ import annotations

import random
import re

import pytest

from localfleet.errors import BadInput
from localfleet.speech import MAX_CHARS, PIECE_CHARS, require_text, split_text


def _bare(text: str) -> str:
    return re.sub(r"\s", "", text)


def _texts() -> list[str]:
    """Texts of every shape: prose, one endless sentence, no spaces, CJK, accents, odd whitespace."""
    rng = random.Random(9)
    alphabet = "abc de .,;:!?\n\t\u3002\u3001e\u0301\u2014\u201d)"
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(600))) for _ in range(300)]
    texts += [
        "The quick brown fox. " * 40,
        "the quick brown fox jumps over the lazy dog " * 60,
        "a" * 1000,
        "\u65e5\u672c\u8a9e\u306e\u6587\u3002" * 100,
        "  \n leading and trailing whitespace \t ",
    ]
    return texts


@pytest.mark.parametrize("limit", [1, 7, 40, PIECE_CHARS])
def test_pieces_are_bounded_and_lose_nothing_but_whitespace(limit: int) -> None:
    for text in _texts():
        pieces = split_text(text, limit)
        assert all(0 < len(piece) <= limit for piece in pieces), (text, pieces)
        assert all(piece == piece.strip() for piece in pieces)
        assert _bare("".join(pieces)) == _bare(text)


def test_a_piece_ends_at_a_sentence_then_a_clause_then_a_space_then_anywhere() -> None:
    assert split_text("One two. Three, four five six", 20) == ["One two.", "Three, four five six"]
    assert split_text("One, two three. Four", 14) == ["One,", "two three.", "Four"]
    assert split_text("one two three four", 10) == ["one two", "three four"]
    assert split_text("abcdefghij", 4) == ["abcd", "efgh", "ij"]
    # The last sentence end in reach: short sentences share a piece.
    assert split_text("A b. C d. E f g h i j k", 10) == ["A b. C d.", "E f g h i", "j k"]


def test_marks_that_end_nothing_do_not_split() -> None:
    assert split_text("Pi is 3.14 and U.S.A. is short", 12) == ["Pi is 3.14", "and U.S.A.", "is short"]
    assert split_text("\u65e5\u672c\u3002\u8a9e\u6587\u3001\u3042\u3044", 4) == [
        "\u65e5\u672c\u3002",
        "\u8a9e\u6587\u3001",
        "\u3042\u3044",
    ]


def test_a_cut_keeps_an_accent_with_its_letter() -> None:
    assert split_text("e\u0301" * 3, 3) == ["e\u0301", "e\u0301", "e\u0301"]


def test_text_of_only_whitespace_makes_no_piece() -> None:
    assert split_text(" \n\t ") == []


def test_text_over_the_limit_is_refused_with_an_excerpt() -> None:
    assert require_text("x" * MAX_CHARS) == "x" * MAX_CHARS
    with pytest.raises(BadInput) as err:
        require_text("y" * (MAX_CHARS + 1))
    message = str(err.value)
    assert f"limit of {MAX_CHARS} characters" in message
    assert "max_chars" in message
    assert f"({MAX_CHARS + 1} characters)" in message
    assert len(message) < 300
