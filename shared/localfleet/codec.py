"""The protobuf codec with LocalAI's 50 MiB cap on requests and replies (RESOURCE_EXHAUSTED beyond)."""

from __future__ import annotations

from typing import Any

from grpclib.const import Status
from grpclib.encoding.proto import ProtoCodec
from grpclib.exceptions import GRPCError


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
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"request of {len(data)} bytes exceeds the {self.max_bytes} byte limit; send less per call "
                "or raise LOCALFLEET_MAX_MESSAGE_BYTES",
            )
        return super().decode(data, message_type)
