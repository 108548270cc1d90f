"""localfleet coqui: Coqui TTS (coqui-tts) text to speech."""
