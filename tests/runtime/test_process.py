"""A real `localfleet serve` process: drain on SIGTERM, second signal, parent death, lazy imports."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from localfleet.client import connect
from localfleet.proto import backend_pb2 as pb
from localfleet.testing import spawn

WORKBENCH = "tests.runtime.workbench:Workbench"


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


async def test_sigterm_drains_calls_in_flight_then_exits_zero() -> None:
    with spawn(WORKBENCH) as proc:
        await _load(proc.addr)
        async with connect(proc.addr) as client:
            in_flight = asyncio.create_task(client.backend.Predict(pb.PredictOptions(Prompt="p", Tokens=150)))
            await _wait_in_flight(proc.addr)
            proc.popen.send_signal(signal.SIGTERM)
            async with connect(proc.addr) as other:
                for _ in range(1000):  # the signal is handled on the server's loop: wait until it shows
                    if not await other.ready():
                        break
                    await asyncio.sleep(0.005)
                assert not await other.ready()
                with pytest.raises(GRPCError) as err:
                    await other.backend.Predict(pb.PredictOptions(Prompt="late", Tokens=1))
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


async def test_second_signal_exits_at_once() -> None:
    with spawn(WORKBENCH) as proc:
        await _load(proc.addr)
        async with connect(proc.addr) as client:
            in_flight = asyncio.create_task(
                client.backend.Predict(pb.PredictOptions(Prompt="p", Tokens=100_000))
            )
            await _wait_in_flight(proc.addr)
            proc.popen.send_signal(signal.SIGTERM)
            async with connect(proc.addr) as other:
                for _ in range(1000):
                    if not await other.ready():
                        break
                    await asyncio.sleep(0.005)
            proc.popen.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.popen.wait, 10) == 2
            in_flight.cancel()


def test_backend_exits_when_its_parent_dies(tmp_path: object) -> None:
    """LocalAI core launched it (run.sh) and was killed: the backend must not outlive it."""
    launcher = textwrap.dedent(
        f"""
        import subprocess, sys
        child = subprocess.Popen([sys.executable, "-m", "localfleet", "serve", {WORKBENCH!r},
                                  "--addr", "127.0.0.1:0"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 text=True)
        for line in child.stderr:  # like core, stay alive until the backend serves, then die
            if " serving on " in line:
                break
        print(child.pid, flush=True)
        """
    )
    env = {**os.environ, "LOCALAI_BACKEND_PARENT_WATCH_INTERVAL": "100ms"}
    out = subprocess.run(
        [sys.executable, "-c", launcher], capture_output=True, text=True, env=env, check=True
    )
    child = int(out.stdout.strip())
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(child, signal.SIGKILL)
    pytest.fail("the backend outlived its parent")


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
