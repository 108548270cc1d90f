"""localfleet bark: Bark (transformers) text to speech and sound generation."""
