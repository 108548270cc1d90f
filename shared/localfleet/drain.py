"""grpclib's Server with a drain that tells clients to go away (HTTP/2 GOAWAY) before their sockets close.

grpclib's own `Server.close()` closes the listener and cancels every handler, but sends no GOAWAY and leaves
the sockets open until the process exits: a client (LocalAI core's grpc-go) learns only by being cut, and
calls it starts meanwhile fail with "transport is closing". Here a drain closes the listener at once and
sends each connection a graceful GOAWAY (NO_ERROR, last stream 2^31-1: whatever the client began still
finishes); once the calls are over, clients close their connections and the rest are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, cast

from grpclib.protocol import AbstractHandler, H2Protocol, Stream
from grpclib.server import Server
from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError
from hyperframe import frame as frames
from hyperframe.frame import DataFrame, Frame, GoAwayFrame

from localfleet.codec import CappedProtoCodec, cap_announced
from localfleet.pings import AckHold

log = logging.getLogger(__name__)

#: the highest stream id: "every stream you opened may still finish" (RFC 9113, 6.8)
LAST_STREAM_ID = 2**31 - 1


def _data_frame_body_repr(frame: DataFrame) -> str:
    """hyperframe's own repr of a DATA frame's body, from its first bytes only.

    h2 formats `repr(frame)` for every frame it receives, for a trace log that is off unless a logger is
    configured (h2.connection, `_receive_frame`); for DATA, hyperframe hex-encodes the whole body (16 KiB
    a frame) to keep 20 hex digits of it. A 1 MB request spent about half of h2's time receiving it
    there. The text is the same: the first 11 bytes decide both the digits and the "...".
    """
    if "PADDED" in frame.flags:
        return Frame._body_repr(frame)
    return frames._raw_data_repr(frame.data[:11])


if hasattr(frames, "_raw_data_repr") and "_body_repr" not in vars(DataFrame):  # hyperframe 6 as it is
    DataFrame._body_repr = _data_frame_body_repr  # type: ignore[method-assign,assignment]  # DATA frames only


class DrainingServer(Server):
    """A grpclib Server that knows its connections, so a drain can reach each one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connections: set[ServerConnection] = set()
        self.draining = False
        codec = kwargs.get("codec")
        #: requests announcing more are refused on their prefix, before they are read
        self.max_request_bytes = codec.max_bytes if isinstance(codec, CappedProtoCodec) else None

    def _protocol_factory(self) -> H2Protocol:
        # The one place grpclib makes a connection's protocol. Private, but grpclib has no public hook,
        # and asyncio's Server does not list its connections (before 3.13): the drain must find each one.
        return ServerConnection(super()._protocol_factory(), self)

    def begin_drain(self) -> None:
        """Accept no more connections; tell each open one to go away."""
        if self.draining:
            return
        self.draining = True
        # grpclib closes its listener only in close(), which also cancels the calls in flight: the
        # listener (its private asyncio server) is closed here alone, so those calls may finish.
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.go_away()

    async def finish_drain(self, linger: float) -> None:
        """Calls are over: give connections `linger` seconds to end their streams and be closed by
        their clients (grpc-go closes one at once then), then close the rest."""
        settling = [c.settled() for c in self.connections]
        if settling:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*settling), linger)
        for connection in list(self.connections):
            connection.close()
        self.close()
        await self.wait_closed()


class ServerConnection(H2Protocol):
    """grpclib's protocol for one accepted connection (built from the one grpclib made), which can be
    told to go away."""

    def __init__(self, made: H2Protocol, server: DrainingServer) -> None:
        self.user_agent: str | None = None
        super().__init__(_Requests(made.handler, self), made.config, made.h2_config)
        self.server = server
        self.closed = asyncio.Event()
        self.goaway_sent = False
        self._transport: asyncio.Transport | None = None
        self._acks: AckHold | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._transport = cast(asyncio.Transport, transport)
        # grpclib writes through the transport its Connection holds, and each Stream takes that one
        self._acks = AckHold(self._transport, self.connection._connection)
        self.connection._transport = cast(asyncio.Transport, self._acks)
        self.server.connections.add(self)
        if self.server.draining:  # accepted just before the listener closed
            self.go_away()

    def data_received(self, data: bytes) -> None:
        # grpclib's own, but for where the PING ACKs a frame brings out are written (localfleet.pings)
        assert self._acks is not None
        try:
            events = self.connection.feed(data)
        except ProtocolError:
            log.debug("Protocol error", exc_info=True)
            self.processor.close("Protocol error")
            return
        for event in events:
            self.processor.process(event)
        self._acks.received(events)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._acks is not None:
            self._acks.close()
        super().connection_lost(exc)
        self.server.connections.discard(self)
        self.closed.set()

    def go_away(self) -> None:
        """Send the GOAWAY; the connection stays open for the streams the client began."""
        transport = self._transport
        if self.goaway_sent or transport is None or transport.is_closing():
            return
        # grpclib's own client ends every call it has not finished reading the moment any GOAWAY comes
        # (even one whose reply has arrived): its connections are only closed, once their calls are over.
        if self.user_agent is not None and "grpclib" in self.user_agent:
            return
        self.goaway_sent = True
        # Written past h2: its close_connection() puts the whole connection in state CLOSED, after which
        # the streams the GOAWAY lets finish could send nothing (python-hyper/h2#1181). A frame is one
        # write, as every write grpclib makes, so it never lands inside another frame.
        frame = GoAwayFrame(0, last_stream_id=LAST_STREAM_ID, error_code=ErrorCodes.NO_ERROR)
        transport.write(frame.serialize())

    async def settled(self) -> None:
        """Until no stream is open here and, after a GOAWAY, the client has closed the connection."""
        waiter = self.connection.stream_close_waiter  # set by grpclib each time a stream ends
        while self.processor.streams and not self.closed.is_set():
            waiter.clear()
            await waiter.wait()
        if self.goaway_sent:
            await self.closed.wait()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class _Requests(AbstractHandler):
    """grpclib's request handler for one connection, noting which client library the requests come from
    and capping each request's size on the length it announces."""

    def __init__(self, handler: AbstractHandler, connection: ServerConnection) -> None:
        self.handler = handler
        self.connection = connection

    def accept(
        self, stream: Stream, headers: list[tuple[str, str]], release_stream: Callable[[], Any]
    ) -> None:
        if self.connection.user_agent is None:
            self.connection.user_agent = dict(headers).get("user-agent", "")
        if (cap := self.connection.server.max_request_bytes) is not None:
            cap_announced(stream, cap)
        self.handler.accept(stream, headers, release_stream)

    def cancel(self, stream: Stream) -> None:
        self.handler.cancel(stream)

    def close(self) -> None:
        self.handler.close()
