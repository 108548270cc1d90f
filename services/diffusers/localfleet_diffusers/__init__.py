"""localfleet diffusers backend."""
