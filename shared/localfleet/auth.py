"""Bearer-token check on every call but the standard health service (Kubernetes probes send no headers)."""

from __future__ import annotations

import hmac

from grpclib.const import Status
from grpclib.events import RecvRequest, listen
from grpclib.exceptions import GRPCError
from grpclib.server import Server

_OPEN_PREFIX = "/grpc.health.v1.Health/"


def require_token(server: Server, token: str) -> None:
    expected = f"Bearer {token}".encode()

    async def check(event: RecvRequest) -> None:
        if event.method_name.startswith(_OPEN_PREFIX):
            return
        sent = event.metadata.get("authorization", "")
        sent_bytes = sent.encode() if isinstance(sent, str) else bytes(sent)
        if not hmac.compare_digest(sent_bytes, expected):  # constant time: no token guessing by timing
            raise GRPCError(
                Status.UNAUTHENTICATED,
                "missing or wrong bearer token: "
                "send metadata 'authorization: Bearer <LOCALAI_GRPC_AUTH_TOKEN>'",
            )

    listen(server, RecvRequest, check)
