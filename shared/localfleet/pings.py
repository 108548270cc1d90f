"""PING acknowledgements that ride with a streaming call's next frame.

grpc-go, LocalAI core's client, answers each DATA frame it reads (while no probe of its is outstanding)
with a WINDOW_UPDATE and a bandwidth-probe PING. On a token stream that is one more read and write on
both sides per token, each waking a process that competes with the engine's compute threads for the same
cores. While a call is open on the connection the ACK is held and written after the next frames, in one
write: the client reads both at once, and its probe is still outstanding when that DATA frame arrives, so
it sends no new one for it (half the probes). With nothing to send within HOLD_SECONDS (a paused stream,
a unary call still computing) the ACK goes alone. An idle connection's PING is answered at once, so
keepalive timing is not moved.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from h2.connection import H2Connection
from h2.events import Event, PingReceived, WindowUpdated

log = logging.getLogger(__name__)

#: at most this long an ACK waits for a frame to ride with: above a slow token's interval, below any
#: keepalive timeout
HOLD_SECONDS = 0.1

_CONTROL = (PingReceived, WindowUpdated)


class AckHold:
    """Stands in for one connection's transport (grpclib writes every frame through it): PING ACKs held
    by `received` are written after the frames of the next write."""

    def __init__(self, transport: asyncio.Transport, h2: H2Connection) -> None:
        self._transport = transport
        self._h2 = h2
        self._held = b""
        self._timer: asyncio.TimerHandle | None = None

    def received(self, events: list[Event]) -> None:
        """After what the client sent was taken in: hold the output when it is only PING ACKs and a call
        is open, else write it all now."""
        data = self._h2.data_to_send()
        if data and events and self._h2.open_inbound_streams and all(isinstance(e, _CONTROL) for e in events):
            self._held += data
            if self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(HOLD_SECONDS, self.write, b"")
        elif data or self._held:
            self.write(data)

    def write(self, data: bytes) -> None:
        if self._held:
            data, self._held = data + self._held, b""
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        if data and not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        """The connection is gone: drop what is held."""
        self._held = b""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)  # the rest of the transport, as it is
