"""The request size cap on the length a message announces: refused before the message is read.

grpclib buffers a whole message before the codec can look at its size; a real `localfleet serve`
process shows that a request announcing more than the cap is refused on its 5-byte prefix, without
the rest being sent, and that refusing a full-size one leaves the server's memory where it was.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc  # type: ignore[import-untyped]
import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import ResponseReceived, StreamEnded, StreamReset, TrailersReceived

from localfleet.client import connect
from localfleet.proto import backend_pb2 as pb
from localfleet.settings import MiB, split_addr
from localfleet.testing import spawn

pytestmark = pytest.mark.asyncio

WORKBENCH = "tests.runtime.workbench:Workbench"
#: three times the default cap (50 MiB)
ANNOUNCED = 150 * MiB
RESOURCE_EXHAUSTED = "8"


async def _announce(addr: str, announced: int, sent: bytes) -> dict[str, str]:
    """A Predict whose prefix announces `announced` bytes, followed by `sent` only: the status headers."""
    reader, writer = await asyncio.open_connection(*split_addr(addr))
    h2 = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
    h2.initiate_connection()
    stream = h2.get_next_available_stream_id()
    h2.send_headers(
        stream,
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/backend.Backend/Predict"),
            (":authority", addr),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ],
    )
    h2.send_data(stream, b"\0" + announced.to_bytes(4, "big") + sent)  # the stream stays open
    writer.write(h2.data_to_send())
    status: dict[str, str] = {}
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                raise EOFError("the server closed the connection without ending the call")
            for event in h2.receive_data(data):
                if isinstance(event, ResponseReceived | TrailersReceived):
                    status.update(dict(event.headers))  # type: ignore[arg-type]
                if isinstance(event, StreamEnded | StreamReset) and event.stream_id == stream:
                    return status
            writer.write(h2.data_to_send())
    finally:
        writer.close()


def _peak_rss(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


async def test_a_request_announcing_more_than_the_cap_is_refused_before_it_is_sent() -> None:
    with spawn(WORKBENCH) as proc:
        # Only 1 KiB of the 150 MiB ever comes: a server that waits for the message never answers.
        status = await asyncio.wait_for(_announce(proc.addr, ANNOUNCED, b"x" * 1024), 10)
        assert status.get("grpc-status") == RESOURCE_EXHAUSTED, status
        assert f"request of {ANNOUNCED} bytes exceeds the {50 * MiB} byte limit" in status["grpc-message"]
        async with connect(proc.addr) as client:
            assert await client.healthy()
        # A request under the cap still reads its message whole.
        within = await asyncio.wait_for(_announce(proc.addr, 4, b"\x0a\x02hi"), 10)
        assert within.get("grpc-status") != RESOURCE_EXHAUSTED, within


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS is read from /proc")
async def test_refusing_a_full_request_over_the_cap_leaves_server_memory_where_it_was() -> None:
    request = pb.PredictOptions(Prompt="x" * ANNOUNCED)
    with spawn(WORKBENCH) as proc:
        async with connect(proc.addr) as client:
            assert await client.healthy()
        before = _peak_rss(proc.popen.pid)
        # grpcio's C core, as LocalAI core's grpc-go: it sends all it may and reads the status.
        async with grpc.aio.insecure_channel(proc.addr) as channel:
            predict = channel.unary_unary(
                "/backend.Backend/Predict",
                request_serializer=pb.PredictOptions.SerializeToString,
                response_deserializer=pb.Reply.FromString,
            )
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await predict(request, timeout=30)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        grown = _peak_rss(proc.popen.pid) - before
        # At most the HTTP/2 window (4 MiB) is buffered, where reading the message took 150 MiB and more.
        assert grown < 32 * MiB, f"the server's peak RSS grew {grown / MiB:.0f} MiB"
