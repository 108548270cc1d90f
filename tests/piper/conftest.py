"""The faster-whisper backend that hears the synthesized speech back (module-scoped, like the tests)."""

from __future__ import annotations

from tests.piper.speech_checks import whisper

__all__ = ["whisper"]
