"""`localfleet call` with no engine behind it: streams, client-side mistakes, unreachable backends."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from localfleet.call import Call
from localfleet.proto import backend_pb2 as pb
from localfleet.testing import serving
from tests.cli_run import cli, failed
from tests.runtime.workbench import Workbench

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]


class ByteEcho(Workbench):
    """Streams the prompt back one byte a chunk, as llama.cpp may cut a character across chunks."""

    async def PredictStream(self, request: pb.PredictOptions, call: Call) -> AsyncIterator[pb.Reply]:
        for count, byte in enumerate(request.Prompt.encode(), 1):
            yield pb.Reply(message=bytes([byte]), tokens=count)


async def test_a_stream_joins_characters_cut_across_chunks() -> None:
    text = "naïve café, 日本語, 🎉!"
    async with serving(ByteEcho()) as served:
        assert (await served.client.backend.LoadModel(pb.ModelOptions(Model="echo"))).success
        ran = await cli(served.addr, "predict", text, "--stream")
    assert ran.code == 0, ran.err
    assert ran.out == text + "\n"


async def test_client_side_mistakes_and_an_unreachable_backend_are_one_line_and_exit_1() -> None:
    runs = await asyncio.gather(
        cli("127.0.0.1:1", "predict"),
        cli("127.0.0.1:1", "predict", "--message", "no role"),
        cli("127.0.0.1:1", "tokenize", "hello", "--timeout", "2"),
    )
    nothing, bad_message, unreachable = runs
    failed(nothing, "predict needs a prompt or --message")
    failed(bad_message, "must be ROLE:CONTENT")
    failed(unreachable, "cannot reach 127.0.0.1:1")


async def test_a_backend_that_does_not_answer_in_time_is_named_with_the_timeout() -> None:
    with socket.socket() as silent:  # accepts connections (the kernel's backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        addr = f"127.0.0.1:{silent.getsockname()[1]}"
        ran = await cli(addr, "tokenize", "hello", "--timeout", "1")
    failed(ran, f"{addr} did not answer within 1 s")
