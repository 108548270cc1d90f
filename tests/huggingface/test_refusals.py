"""HTTP refusals of an endpoint as statuses: 429 and 5xx cannot be had from llama.cpp's server, so the
mapping is checked on real httpx2 responses."""

from __future__ import annotations

import httpx2
from grpclib.const import Status

from localfleet_huggingface.remote import _refusal


def test_http_refusals_map_to_statuses() -> None:
    def answer(status: int, headers: dict[str, str] | None = None) -> httpx2.Response:
        return httpx2.Response(status, headers=headers, text="slow down")

    limited = _refusal(429, answer(429, {"retry-after": "12"}), "http://x")
    assert limited.status == Status.RESOURCE_EXHAUSTED
    assert "retry after 12 s" in str(limited)
    assert _refusal(503, answer(503), "http://x").status == Status.UNAVAILABLE
    assert _refusal(401, answer(401), "http://x").status == Status.UNAUTHENTICATED
    assert _refusal(422, answer(422), "http://x").status == Status.INVALID_ARGUMENT
