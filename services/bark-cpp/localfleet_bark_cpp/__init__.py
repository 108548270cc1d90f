"""localfleet bark-cpp: Bark text to speech on bark.cpp (GGML)."""
