"""Client mistakes are the client's: short statuses that never stall the backend, and no tracebacks."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpclib.client
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from localfleet.call import Call
from localfleet.client import connect
from localfleet.errors import BadInput, EngineFailure
from localfleet.inputs import parse_json
from localfleet.proto import backend_pb2 as pb
from localfleet.service import MAX_STATUS_BYTES
from localfleet.testing import Served, serving, spawn
from tests.runtime.conftest import load
from tests.runtime.workbench import Workbench

pytestmark = pytest.mark.asyncio

WORKBENCH = "tests.runtime.workbench:Workbench"
ONNX_ALLOCATION = (
    "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running MatMul "
    "node. Name:'/MatMul' Status Message: Failed to allocate memory for requested buffer of size 1234"
)


class Clerk(Workbench):
    """The workbench with a path-taking RPC and Predicts that fail as engines and parsers do."""

    async def AudioTranscription(self, request: pb.TranscriptRequest, call: Call) -> pb.TranscriptResult:
        call.paths.readable(request.dst, "dst")
        return pb.TranscriptResult(text="read")

    async def Predict(self, request: pb.PredictOptions, call: Call) -> pb.Reply:
        failures = {
            "memory": MemoryError(),
            "onnx": RuntimeError(ONNX_ALLOCATION),
            "long": BadInput("x" * 200_000),
            "long-utf8": EngineFailure("é" * 100_000),
        }
        if request.Prompt in failures:
            raise failures[request.Prompt]
        if request.Prompt == "json":
            return pb.Reply(message=repr(parse_json(request.Tools, "Tools")).encode())
        if request.Prompt == "recurse":
            return pb.Reply(message=str(await call.run(_deep, 0)).encode())
        return await super().Predict(request, call)


def _deep(depth: int) -> int:
    return _deep(depth + 1)  # an engine recursing on a deeply nested input


@pytest.fixture
async def clerk() -> AsyncIterator[Served]:
    async with serving(Clerk()) as served:
        assert (await load(served)).success
        yield served


async def _status_of(call: object) -> GRPCError:
    with pytest.raises(GRPCError) as err:
        await call  # type: ignore[misc]
    return err.value


def _tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


async def test_a_huge_model_identity_is_refused_at_once_while_health_keeps_answering() -> None:
    # A real process, so a stalled event loop shows as a Health timeout here instead of stalling the test.
    with spawn(WORKBENCH) as proc:
        async with connect(proc.addr) as client:
            assert (await client.backend.LoadModel(pb.ModelOptions(Model="m"))).success
            for identity in ("i" * 1_000_000, "é" * 131_072):  # 1 MB; 256 KB of two-byte characters
                request = pb.PredictOptions(Prompt="x", ModelIdentity=identity)
                refused = asyncio.create_task(_status_of(client.backend.Predict(request, timeout=10)))
                probes = 0
                while probes == 0 or not refused.done():
                    await client.backend.Health(pb.HealthMessage(), timeout=1)
                    probes += 1
                err = await refused
                assert err.status == Status.NOT_FOUND
                assert f"({len(identity)} characters)" in (err.message or "")
                assert len(err.message or "") < 300


async def test_a_status_message_is_cut_to_a_bounded_size(clerk: Served) -> None:
    err = await _status_of(clerk.client.backend.Predict(pb.PredictOptions(Prompt="long")))
    assert err.status == Status.INVALID_ARGUMENT
    assert len((err.message or "").encode()) <= MAX_STATUS_BYTES
    assert (err.message or "").startswith("xxxx")
    assert (err.message or "").endswith("(message cut from 200000 bytes)")
    err = await _status_of(clerk.client.backend.Predict(pb.PredictOptions(Prompt="long-utf8")))
    assert err.status == Status.INTERNAL
    assert len((err.message or "").encode()) <= MAX_STATUS_BYTES
    assert (err.message or "").startswith("éé")  # cut between characters, never inside one


async def test_paths_the_system_refuses_are_invalid_argument_without_a_traceback(
    clerk: Served, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    os.symlink(tmp_path / "b", tmp_path / "a")
    os.symlink(tmp_path / "a", tmp_path / "b")
    mistakes = {
        f"{tmp_path}/a\0.wav": "contains a null byte",
        f"{tmp_path}/{'n' * 300}.wav": "is too long for this file system",
        f"{tmp_path}/{'d' * 200}/" * 30 + "x.wav": "is too long for this file system",
        f"{tmp_path}/a/x.wav": "loop of symbolic links",
        f"{tmp_path}/" + "p" * 100_000: "is too long for this file system",
    }
    caplog.set_level(logging.INFO)
    for dst, problem in mistakes.items():
        err = await _status_of(clerk.client.backend.AudioTranscription(pb.TranscriptRequest(dst=dst)))
        assert err.status == Status.INVALID_ARGUMENT, err.message
        assert (err.message or "").startswith("dst ")
        assert problem in (err.message or "")
        assert len(err.message or "") < 600
    assert _tracebacks(caplog) == []
    audio = tmp_path / "ok.wav"
    audio.write_bytes(b"RIFF")
    reply = await clerk.client.backend.AudioTranscription(pb.TranscriptRequest(dst=str(audio)))
    assert reply.text == "read"


async def test_json_a_parser_cannot_take_is_invalid_argument(
    clerk: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    mistakes = {
        "[" * 100_000: "Tools nests arrays or objects too deeply",
        "1" * 5000: "Tools holds a number too long",
        '{"type": ': "Tools is not valid JSON",
    }
    for tools, problem in mistakes.items():
        err = await _status_of(clerk.client.backend.Predict(pb.PredictOptions(Prompt="json", Tools=tools)))
        assert err.status == Status.INVALID_ARGUMENT
        assert problem in (err.message or "")
    assert _tracebacks(caplog) == []
    reply = await clerk.client.backend.Predict(pb.PredictOptions(Prompt="json", Tools="[[1]]"))
    assert reply.message == b"[[1]]"


async def test_recursion_and_allocation_failures_are_the_request_s_not_the_engine_s(
    clerk: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    expected = {
        "recurse": Status.INVALID_ARGUMENT,
        "memory": Status.RESOURCE_EXHAUSTED,
        "onnx": Status.RESOURCE_EXHAUSTED,
    }
    for prompt, status in expected.items():
        err = await _status_of(clerk.client.backend.Predict(pb.PredictOptions(Prompt=prompt)))
        assert err.status == status, err.message
    assert _tracebacks(caplog) == []
    warnings = [r for r in caplog.records if r.name == "localfleet.service" and r.levelno == logging.WARNING]
    assert len(warnings) == len(expected)  # one line each
    err = await _status_of(clerk.client.backend.Predict(pb.PredictOptions(Prompt="crash")))
    assert err.status == Status.INTERNAL
    assert _tracebacks(caplog) == ["Predict failed"]  # a real engine failure keeps its traceback


async def test_a_request_whose_deadline_passed_on_the_way_logs_no_error(
    loaded: Served, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO)
    # A deadline that runs out between the client and the handler, as one sent with 1 ns left does.
    monkeypatch.setattr(grpclib.client, "encode_timeout", lambda _: "1n")
    with pytest.raises((GRPCError, TimeoutError)):
        await loaded.client.backend.Predict(pb.PredictOptions(Prompt="late", Tokens=1), timeout=5)
    monkeypatch.undo()
    assert _tracebacks(caplog) == []
    assert any("deadline passed" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)
    reply = await loaded.client.backend.Predict(pb.PredictOptions(Prompt="next", Tokens=1), timeout=5)
    assert reply.message == b"next:1"
