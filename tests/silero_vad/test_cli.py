"""`localfleet call ADDR vad` against the silero-vad backend, with a bearer token (tests/cli_run.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from localfleet.testing import Served, serving
from localfleet_silero_vad.servicer import SileroVAD
from tests.audio_fixtures import Clip, clips_dir, speech_clip, vad_clip
from tests.cli_run import cli, failed

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]

__all__ = ["clips_dir", "speech_clip", "vad_clip"]  # shared fixtures, served here as there

TOKEN = "cli-token"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def guarded_vad() -> AsyncIterator[Served]:
    """silero-vad behind a bearer token, not loaded yet."""
    async with serving(SileroVAD(), auth_token=TOKEN) as served:
        yield served


async def test_vad_sends_the_token_and_prints_speech_segments_in_seconds(
    guarded_vad: Served, vad_clip: Clip, speech_clip: Clip
) -> None:
    addr, clip = guarded_vad.addr, str(vad_clip.path)
    failed(await cli(addr, "vad", clip), "UNAUTHENTICATED")
    failed(
        await cli(addr, "vad", clip, token=TOKEN),
        "error: FAILED_PRECONDITION: no model loaded; call LoadModel first",
    )
    # Piper pauses at the comma: a longer minimum silence keeps the sentence one segment.
    loaded = await cli(addr, "--token", TOKEN, "load", "silero-vad", "--option", "min_silence_ms:500")
    assert loaded.code == 0, loaded.err
    ran = await cli(addr, "vad", clip, "--token", TOKEN)
    assert ran.code == 0, ran.err
    [segment] = [json.loads(line) for line in ran.lines]
    assert segment["start"] == pytest.approx(vad_clip.speech[0], abs=0.3)
    assert segment["end"] == pytest.approx(vad_clip.speech[1], abs=0.3)
    # Piper's own 22.05 kHz file: resampled to 16 kHz here, so its times are still seconds of the clip.
    resampled = await cli(addr, "vad", str(speech_clip.path), token=TOKEN)
    assert resampled.code == 0, resampled.err
    spans = [json.loads(line) for line in resampled.lines]
    assert spans
    assert spans[0]["start"] < 0.5
    assert speech_clip.seconds - 1.0 < spans[-1]["end"] <= speech_clip.seconds + 0.01


async def test_an_unreadable_audio_file_is_named(guarded_vad: Served, tmp_path: Path) -> None:
    failed(
        await cli(guarded_vad.addr, "vad", str(tmp_path / "missing.wav")),
        "cannot read audio file",
        "missing.wav",
    )
