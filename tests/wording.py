"""Comparing what a speech engine heard with what was said, as the audio tests do."""

from __future__ import annotations

import difflib
import re


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def heard_as(heard: str, said: str, slack: float = 0.1) -> None:
    """Whisper heard what TTS said: at most `slack` of the words differ.

    Synthesis and recognition run in float32 on whatever CPU the test has; a word in ten may come out
    differently (as "a" vs "the") between instruction sets, while wrong audio misses most of them.
    """
    got, want = words(heard), words(said)
    matcher = difflib.SequenceMatcher(a=want, b=got, autojunk=False)
    kept = sum(block.size for block in matcher.get_matching_blocks())
    missed = max(len(want), len(got)) - kept
    assert missed <= slack * len(want), f"heard {heard!r} for {said!r}"
