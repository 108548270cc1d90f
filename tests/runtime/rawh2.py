"""A bare HTTP/2 client connection, frame by frame: what a peer sees below any gRPC library."""

from __future__ import annotations

import asyncio

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import ConnectionTerminated, Event, RemoteSettingsChanged

from localfleet.settings import split_addr


class RawH2:
    """An HTTP/2 client connection; `chunks` reads what arrives, one socket read at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.h2 = H2Connection(H2Configuration(client_side=True))

    @classmethod
    async def open(cls, addr: str) -> RawH2:
        raw = cls(*await asyncio.open_connection(*split_addr(addr)))
        raw.h2.initiate_connection()
        raw.send()
        while not any(isinstance(e, RemoteSettingsChanged) for e in await raw.events()):
            pass  # the server's SETTINGS: it has accepted this connection
        raw.send()  # our SETTINGS ack
        return raw

    def send(self) -> None:
        """Write what h2 has queued (frames built on `self.h2`)."""
        self.writer.write(self.h2.data_to_send())

    async def events(self) -> list[Event]:
        """The events of one socket read."""
        data = await self.reader.read(65536)
        if not data:
            raise EOFError("the server closed the connection")
        return list(self.h2.receive_data(data))

    async def goaway(self) -> ConnectionTerminated:
        """The server's GOAWAY; EOFError when the connection closes without one."""
        while True:
            for event in await self.events():
                if isinstance(event, ConnectionTerminated):
                    return event

    def close(self) -> None:
        self.writer.close()
