"""A real `localfleet serve` process: drain on SIGTERM (GOAWAY), second signal, parent death, lazy imports."""

from __future__ import annotations

import asyncio
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc  # type: ignore[import-untyped]
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from h2.errors import ErrorCodes

from localfleet.client import Client, connect
from localfleet.proto import backend_pb2 as pb
from localfleet.settings import split_addr
from localfleet.testing import free_port, spawn
from tests.runtime.rawh2 import RawH2

WORKBENCH = "tests.runtime.workbench:Workbench"
ROOT = Path(__file__).resolve().parents[2]


async def _load(addr: str) -> None:
    async with connect(addr) as client:
        result = await client.backend.LoadModel(pb.ModelOptions(Model="m"))
        assert result.success, result.message


async def _wait_in_flight(addr: str) -> None:
    """Until Status says BUSY: the request is admitted and running."""
    async with connect(addr) as client:
        for _ in range(1000):
            status = await client.backend.Status(pb.HealthMessage())
            if status.state == pb.StatusResponse.BUSY:
                return
            await asyncio.sleep(0.005)
    raise AssertionError("the request never started")


async def _wait_not_ready(client: Client) -> None:
    """Until readiness says NOT_SERVING: the signal is handled on the server's loop, a moment later."""
    for _ in range(1000):
        if not await client.ready():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("readiness never went to NOT_SERVING")


async def test_sigterm_says_goaway_on_every_connection_while_calls_in_flight_finish() -> None:
    with spawn(WORKBENCH) as proc:
        await _load(proc.addr)
        idle = await RawH2.open(proc.addr)
        # grpcio's C core takes a GOAWAY as LocalAI core's grpc-go does: calls begun on the connection go on.
        async with grpc.aio.insecure_channel(proc.addr) as channel:
            predict = channel.unary_unary(
                "/backend.Backend/Predict",
                request_serializer=pb.PredictOptions.SerializeToString,
                response_deserializer=pb.Reply.FromString,
            )
            in_flight = predict(pb.PredictOptions(Prompt="p", Tokens=300))
            await _wait_in_flight(proc.addr)
            proc.popen.send_signal(signal.SIGTERM)
            goaway = await asyncio.wait_for(idle.goaway(), 10)
            idle.close()  # as a client does once told to go away
            # Graceful: no error, and every stream the client began may still finish.
            assert goaway.error_code == ErrorCodes.NO_ERROR
            assert goaway.last_stream_id == 2**31 - 1
            # The busy connection heard it too: the channel stops using it (READY -> IDLE) mid-call.
            await asyncio.wait_for(channel.wait_for_state_change(grpc.ChannelConnectivity.READY), 10)
            assert not in_flight.done(), "the GOAWAY came only once the call was over"
            with pytest.raises(ConnectionRefusedError):  # no new connection while draining
                await asyncio.open_connection(*split_addr(proc.addr))
            reply = await in_flight
            assert reply.message == b"p:300"
        assert await asyncio.to_thread(proc.popen.wait, 20) == 0


async def test_sigterm_drains_calls_in_flight_then_exits_zero() -> None:
    with spawn(WORKBENCH) as proc:
        await _load(proc.addr)
        async with connect(proc.addr) as client:
            in_flight = asyncio.create_task(client.backend.Predict(pb.PredictOptions(Prompt="p", Tokens=150)))
            await _wait_in_flight(proc.addr)
            proc.popen.send_signal(signal.SIGTERM)
            # grpclib's client fails its calls on any GOAWAY: its connection is closed after them, untold.
            # On the connection of the call in flight: a draining backend accepts no new connection.
            await _wait_not_ready(client)
            with pytest.raises(GRPCError) as err:
                await client.backend.Predict(pb.PredictOptions(Prompt="late", Tokens=1))
            assert err.value.status == Status.UNAVAILABLE
            assert "draining" in (err.value.message or "")
            reply = await in_flight
            assert reply.message == b"p:150"
        assert await asyncio.to_thread(proc.popen.wait, 20) == 0


async def test_grace_period_cuts_long_calls_then_exits_zero() -> None:
    with spawn(WORKBENCH, "--grace-period", "0.3") as proc:
        await _load(proc.addr)
        async with connect(proc.addr) as client:
            in_flight = asyncio.create_task(
                client.backend.Predict(pb.PredictOptions(Prompt="p", Tokens=100_000))
            )
            await _wait_in_flight(proc.addr)
            started = time.monotonic()
            proc.popen.send_signal(signal.SIGTERM)
            with pytest.raises(GRPCError) as err:
                await in_flight
            assert err.value.status == Status.UNAVAILABLE
            assert "shut down before it finished" in (err.value.message or "")
            assert await asyncio.to_thread(proc.popen.wait, 20) == 0
            assert time.monotonic() - started < 10


async def test_sigterm_during_a_long_load_exits_within_the_grace_period() -> None:
    # A load runs in a thread nothing can interrupt; the process must not wait the load out.
    with spawn(WORKBENCH, "--grace-period", "0.5") as proc:
        async with connect(proc.addr) as client:
            slow = pb.ModelOptions(Model="m", Options=["load_seconds:120"])
            loading = asyncio.create_task(client.backend.LoadModel(slow))
            await _wait_in_flight(proc.addr)
            started = time.monotonic()
            proc.popen.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.popen.wait, 30) == 0
            assert time.monotonic() - started < 15
            loading.cancel()


async def test_second_signal_exits_at_once() -> None:
    with spawn(WORKBENCH) as proc:
        await _load(proc.addr)
        async with connect(proc.addr) as client:
            in_flight = asyncio.create_task(
                client.backend.Predict(pb.PredictOptions(Prompt="p", Tokens=100_000))
            )
            await _wait_in_flight(proc.addr)
            proc.popen.send_signal(signal.SIGTERM)
            await _wait_not_ready(client)
            proc.popen.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.popen.wait, 10) == 2
            in_flight.cancel()


_LAUNCHER = """
import asyncio, subprocess, sys
from localfleet.client import wait_healthy
*argv, addr, log = sys.argv[1:]
with open(log, "w") as err:
    child = subprocess.Popen([*argv, "--addr", addr], stdout=subprocess.DEVNULL, stderr=err)
try:  # like core: stay until the backend serves, then go
    asyncio.run(wait_healthy(addr, 30))
except BaseException:
    child.kill()
    raise
print(child.pid, flush=True)
"""


def _start_then_exit(argv: list[str], env: dict[str, str], log: Path) -> tuple[int, str]:
    """Start a backend from a parent process that exits once it serves: the orphan's pid and address."""
    addr = f"127.0.0.1:{free_port()}"
    out = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, *argv, addr, str(log)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr + (log.read_text() if log.exists() else "")
    return int(out.stdout.strip()), addr


def _exits_within(pid: int, timeout: float) -> bool:
    """Whether a process that is not our child ends within `timeout` s (a pidfd turns readable then)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], timeout)
        return bool(readable)
    finally:
        os.close(fd)


def _env(**changes: str | None) -> dict[str, str]:
    env = {**os.environ, "LOCALAI_BACKEND_PARENT_WATCH_INTERVAL": "10ms"}
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def test_backend_started_by_run_sh_exits_when_its_parent_dies(tmp_path: Path) -> None:
    """LocalAI core launched it (run.sh) and was killed: the backend must not outlive it."""
    venv = Path(sys.executable).parent.parent
    if not (venv / "bin" / "localfleet").is_file():
        pytest.skip("no localfleet command in this environment for run.sh to start")
    folder = tmp_path / "workbench"
    folder.mkdir()
    (folder / "run.sh").symlink_to(ROOT / "scripts" / "run-backend.sh")
    (folder / "BACKEND").write_text(WORKBENCH)
    # run.sh turns the watch on when core's environment does not set it.
    env = _env(LOCALAI_BACKEND_PARENT_WATCH=None, LOCALFLEET_VENV=str(venv), PYTHONPATH=str(ROOT))
    child, _ = _start_then_exit([str(folder / "run.sh")], env, tmp_path / "backend.log")
    if not _exits_within(child, 15):
        os.kill(child, signal.SIGKILL)
        pytest.fail("the backend outlived its parent")


async def test_serve_started_by_hand_outlives_its_parent(tmp_path: Path) -> None:
    """`nohup localfleet serve ... &` from a shell that then exits: the backend keeps serving."""
    argv = [sys.executable, "-m", "localfleet", "serve", WORKBENCH]
    env = _env(LOCALAI_BACKEND_PARENT_WATCH=None)
    child, addr = await asyncio.to_thread(_start_then_exit, argv, env, tmp_path / "backend.log")
    try:
        # Half a second of work after the parent is gone: a watch every 10 ms would have cut it.
        await _load(addr)
        async with connect(addr) as client:
            reply = await client.backend.Predict(pb.PredictOptions(Prompt="p", Tokens=50))
        assert reply.message == b"p:50"
        os.kill(child, signal.SIGTERM)
        assert await asyncio.to_thread(_exits_within, child, 20)
    finally:
        if not _exits_within(child, 0):
            os.kill(child, signal.SIGKILL)


def test_unknown_backend_fails_with_a_clear_message() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "localfleet", "serve", "no-such-backend"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 2
    assert "unknown backend 'no-such-backend'" in out.stderr
