"""Speech clips spoken by Piper once per test session (tests/audio_fixtures.py)."""

from __future__ import annotations

from tests.audio_fixtures import clips_dir, long_clip, speech_clip, speech_formats, vad_clip

__all__ = ["clips_dir", "long_clip", "speech_clip", "speech_formats", "vad_clip"]
