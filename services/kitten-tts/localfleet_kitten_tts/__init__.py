"""localfleet kitten-tts: KittenTTS text to speech."""
