"""`localfleet call ADDR tts` against the piper backend, heard by faster-whisper (tests/cli_run.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from localfleet.testing import Served
from tests.cli_run import cli, failed
from tests.piper.speech_checks import roots, whisper
from tests.piper.test_servicer import piper
from tests.wording import heard_as

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]

__all__ = ["piper", "roots", "whisper"]  # the backends' own fixtures, served here as there


async def test_tts_writes_a_wav_that_soundfile_reads_and_whisper_hears(
    piper: Served, whisper: Served, roots: Path
) -> None:
    import soundfile  # type: ignore[import-untyped]

    text = "The quick brown fox jumps over the lazy dog."
    dst = roots / "fox.wav"
    ran = await cli(piper.addr, "tts", text, "--dst", str(dst))
    assert ran.code == 0, ran.err
    assert ran.out == f"wrote {dst}\n"
    samples, rate = soundfile.read(dst, dtype="float32")
    assert rate == 22050
    assert samples.ndim == 1
    assert 1.0 < len(samples) / rate < 6.0
    assert float(np.abs(samples).max()) > 0.1
    heard = await cli(whisper.addr, "transcribe", str(dst), "--json")
    heard_as(json.loads(heard.out)["text"], text)
    unknown = await cli(piper.addr, "tts", text, "--dst", str(dst), "--voice", "nobody")
    failed(unknown, "unknown voice 'nobody'")
