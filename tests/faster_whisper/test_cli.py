"""`localfleet call ADDR transcribe` against the faster-whisper backend (tests/cli_run.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from localfleet.testing import Served
from tests.audio_fixtures import SENTENCE, Clip, clips_dir, speech_clip
from tests.cli_run import cli, failed
from tests.piper.speech_checks import roots, whisper

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]

__all__ = ["clips_dir", "roots", "speech_clip", "whisper"]  # shared fixtures, served here as there

SEGMENT = re.compile(r"\[\s*([\d.]+)s ->\s*([\d.]+)s\] (.*)")


async def test_transcribe_prints_segments_in_seconds_then_the_text(
    whisper: Served, speech_clip: Clip
) -> None:
    ran = await cli(whisper.addr, "transcribe", str(speech_clip.path), "--language", "en")
    assert ran.code == 0, ran.err
    *segment_lines, last = ran.lines
    assert last == f"text: {SENTENCE}"
    matches = [SEGMENT.fullmatch(line) for line in segment_lines]
    assert segment_lines
    assert all(matches), segment_lines
    spans = [(float(m[1]), float(m[2])) for m in matches if m]
    assert " ".join(m[3] for m in matches if m) == SENTENCE
    # Seconds, not nanoseconds: inside the clip, and the last one ends near its end.
    assert all(0 <= start < end <= speech_clip.seconds + 0.05 for start, end in spans), spans
    assert spans[-1][1] > 0.6 * speech_clip.seconds
    # A relative path is the caller's: sent made absolute.
    relative = await cli(
        whisper.addr, "transcribe", speech_clip.path.name, "--json", cwd=speech_clip.path.parent
    )
    assert relative.code == 0, relative.err
    data = json.loads(relative.out)
    assert data["text"] == SENTENCE
    assert data["language"] == "en"
    assert data["duration"] == pytest.approx(speech_clip.seconds, abs=0.05)
    times = [t for s in data["segments"] for t in (s["start"], s["end"])]
    assert times == pytest.approx([t for span in spans for t in span], abs=0.006)


async def test_a_missing_audio_file_is_named(whisper: Served, tmp_path: Path) -> None:
    failed(await cli(whisper.addr, "transcribe", str(tmp_path / "missing.wav")), "NOT_FOUND", "missing.wav")
