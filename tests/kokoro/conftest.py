"""The folder requests may write in, and the faster-whisper backend that hears the synthesized speech
back (module-scoped, like the tests): both from tests/piper/speech_checks.py."""

from __future__ import annotations

from tests.piper.speech_checks import roots, whisper

__all__ = ["roots", "whisper"]
