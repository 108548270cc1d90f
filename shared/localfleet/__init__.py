"""localfleet: LocalAI-compatible gRPC inference backends on one small asyncio runtime."""

__version__ = "0.1.0"
