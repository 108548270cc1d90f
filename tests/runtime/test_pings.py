"""PING ACKs during a call ride with its next frame (localfleet.pings): grpc-go's bandwidth probes on a token
stream cost one write and one read less per probe on both sides."""

from __future__ import annotations

import asyncio
import struct

import pytest
from h2.events import DataReceived, PingAckReceived

from localfleet import pings
from localfleet.proto import backend_pb2 as pb
from localfleet.testing import Served
from tests.runtime.rawh2 import RawH2

pytestmark = pytest.mark.asyncio

PROBE = b"probe..."


async def _call(raw: RawH2, method: str, request: pb.PredictOptions) -> int:
    """Start a gRPC call on `raw` as grpc-go would; its stream id."""
    stream = raw.h2.get_next_available_stream_id()
    headers = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", f"/backend.Backend/{method}"),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
    body = request.SerializeToString()
    raw.h2.send_headers(stream, headers)
    raw.h2.send_data(stream, b"\0" + struct.pack(">I", len(body)) + body, end_stream=True)
    raw.send()
    return stream


def _ping(raw: RawH2) -> None:
    raw.h2.ping(PROBE)
    raw.send()


async def _until_ack(raw: RawH2) -> tuple[list[object], int]:
    """Reads until the PING ACK: the events of the read that brought it, and how many DATA frames came in
    reads before that one."""
    data_before = 0
    while True:
        events = await raw.events()
        if any(isinstance(e, PingAckReceived) for e in events):
            return list(events), data_before
        data_before += sum(isinstance(e, DataReceived) for e in events)


async def test_a_ping_during_a_stream_is_answered_with_its_next_message(
    loaded: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pings, "HOLD_SECONDS", 30.0)  # only a frame of the stream can take the ACK out
    raw = await RawH2.open(loaded.addr)
    try:
        await _call(raw, "PredictStream", pb.PredictOptions(Prompt="p", Tokens=20))
        while not any(isinstance(e, DataReceived) for e in await raw.events()):
            pass  # the first message is out: the stream is under way
        _ping(raw)
        events, data_before = await asyncio.wait_for(_until_ack(raw), 10)
        # The ACK came in the same write as the stream's next message, after it.
        kinds = [type(e) for e in events]
        assert data_before == 0
        assert DataReceived in kinds[: kinds.index(PingAckReceived)]
    finally:
        raw.close()


async def test_a_held_ack_goes_alone_when_the_call_sends_nothing_for_a_while(
    loaded: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pings, "HOLD_SECONDS", 0.02)
    raw = await RawH2.open(loaded.addr)
    try:
        # A unary call of about 1 s: nothing goes out before its reply.
        await _call(raw, "Predict", pb.PredictOptions(Prompt="p", Tokens=100))
        while (await loaded.client.backend.Status(pb.HealthMessage())).state != pb.StatusResponse.BUSY:
            await asyncio.sleep(0.005)  # polling Status until the call runs, not a wait for a result
        _ping(raw)  # alone in its read: nothing but the PING comes with it
        events, data_before = await asyncio.wait_for(_until_ack(raw), 10)
        assert data_before == 0
        assert not any(isinstance(e, DataReceived) for e in events), "the ACK waited for the reply"
    finally:
        raw.close()


async def test_a_ping_on_an_idle_connection_is_answered_at_once(
    loaded: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pings, "HOLD_SECONDS", 30.0)  # a held ACK would miss the wait below
    raw = await RawH2.open(loaded.addr)
    try:
        _ping(raw)  # may share a read with our SETTINGS ack, which is written at once
        await asyncio.wait_for(_until_ack(raw), 10)
        _ping(raw)  # alone in its read
        events, _ = await asyncio.wait_for(_until_ack(raw), 10)
        acks = [e for e in events if isinstance(e, PingAckReceived)]
        assert acks[0].ping_data == PROBE
    finally:
        raw.close()
