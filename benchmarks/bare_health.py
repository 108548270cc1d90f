"""The floor for Health latency: a bare grpclib server answering only Health, on the same event loop kind."""

from __future__ import annotations

import asyncio
import sys

from grpclib.const import Cardinality, Handler
from grpclib.server import Server, Stream

from localfleet.proto import backend_pb2 as pb


class HealthOnly:
    async def health(self, stream: Stream[pb.HealthMessage, pb.Reply]) -> None:
        await stream.recv_message()
        await stream.send_message(pb.Reply(message=b"OK"))

    def __mapping__(self) -> dict[str, Handler]:
        handler = Handler(self.health, Cardinality.UNARY_UNARY, pb.HealthMessage, pb.Reply)
        return {"/backend.Backend/Health": handler}


async def main(port: int) -> None:
    server = Server([HealthOnly()])
    await server.start("127.0.0.1", port)
    print("serving", flush=True)
    await server.wait_closed()


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(int(sys.argv[1])))
    else:
        uvloop.run(main(int(sys.argv[1])))
