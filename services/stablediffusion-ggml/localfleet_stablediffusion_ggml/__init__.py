"""localfleet stablediffusion-ggml backend."""
