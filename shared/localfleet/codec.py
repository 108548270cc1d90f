"""The protobuf codec with LocalAI's 50 MiB cap on requests and replies (RESOURCE_EXHAUSTED beyond).

The codec sees a request only once grpclib has buffered all of it; `cap_announced` refuses one on the
length its 5-byte gRPC prefix announces, before the rest is read.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from google.protobuf.message import DecodeError
from grpclib.const import Status
from grpclib.encoding.proto import ProtoCodec
from grpclib.exceptions import GRPCError
from grpclib.protocol import Stream

#: a gRPC message's prefix: a compressed flag (1 byte), then the message's length (4 bytes, big-endian)
PREFIX_BYTES = 5
#: the size on the wire of the message this task decoded last: a request's size without encoding it again
#: (upb's ByteSize() serializes the message: 0.15 ms for a 1 MB image)
decoded_bytes: ContextVar[int] = ContextVar("decoded_bytes", default=0)


class CappedProtoCodec(ProtoCodec):
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes

    def encode(self, message: Any, message_type: type[Any]) -> bytes:
        data = super().encode(message, message_type)
        if len(data) > self.max_bytes:
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"reply of {len(data)} bytes exceeds the {self.max_bytes} byte limit; ask for less per call "
                "or raise LOCALFLEET_MAX_MESSAGE_BYTES",
            )
        return data

    def decode(self, data: bytes, message_type: type[Any]) -> Any:
        if len(data) > self.max_bytes:
            raise _too_large(len(data), self.max_bytes)
        decoded_bytes.set(len(data))
        try:
            return super().decode(data, message_type)
        except DecodeError as exc:
            # a client's bytes, not a server fault: a status, no traceback in the log
            raise GRPCError(
                Status.INVALID_ARGUMENT,
                f"the request is not a valid {message_type.__name__} protobuf message ({exc}); "
                "send the message this RPC takes in backend.proto",
            ) from None


def cap_announced(stream: Stream, max_bytes: int) -> None:
    """Refuse each request message on `stream` whose prefix announces more than `max_bytes`.

    grpclib reads a message's prefix, then the whole message, then decodes it: a client announcing
    150 MiB had the server hold 150 MiB before the codec's check. grpclib has no hook between the two
    reads, so this stream's `recv_data` is wrapped: the length is checked as soon as the prefix is in,
    and HTTP/2 flow control keeps the rest at the client (grpclib acknowledges data only as it is read).
    """
    read = stream.recv_data
    at_prefix = True

    async def recv_data(size: int) -> bytes:
        nonlocal at_prefix
        data = await read(size)
        if at_prefix and len(data) == PREFIX_BYTES:
            announced = int.from_bytes(data[1:], "big")
            if announced > max_bytes:
                raise _too_large(announced, max_bytes)
            at_prefix = False  # the message's bytes come next
        else:
            at_prefix = True
        return data

    stream.recv_data = recv_data  # type: ignore[method-assign]


def _too_large(size: int, max_bytes: int) -> GRPCError:
    return GRPCError(
        Status.RESOURCE_EXHAUSTED,
        f"request of {size} bytes exceeds the {max_bytes} byte limit; send less per call "
        "or raise LOCALFLEET_MAX_MESSAGE_BYTES",
    )
