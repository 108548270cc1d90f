"""The local-store image end to end: build it offline, start the compose stack, call it over gRPC.

Needs a Docker engine (started here when dockerd is installed and we are root), debootstrap for the
base image, and the `deploy` extra. Run with `pytest -m docker tests/deploy` (nox -s deploy).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from localfleet.proto import backend_grpc
from localfleet.proto import backend_pb2 as pb
from tests.deploy.tools import ROOT, explain, find_tool, require_compose, run

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1200)]

BASE_IMAGE = os.environ.get("LOCALFLEET_BASE_IMAGE", "localfleet-base:bookworm")
TAG = "test"
IMAGE = f"localfleet/local-store:{TAG}"
COMPOSE_FILE = ROOT / "compose" / "compose.yaml"
TOKEN = "deploy-test-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


def _engine_answers(docker: str) -> bool:
    return run([docker, "info", "--format", "{{.ServerVersion}}"], timeout=30).returncode == 0


@pytest.fixture(scope="module")
def docker() -> Iterator[str]:
    """A Docker client whose engine answers; starts (and later stops) dockerd if none runs."""
    client = find_tool("docker")
    if client is None:
        pytest.skip("no docker client (apt-get install docker.io)")
    if _engine_answers(client):
        yield client
        return
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        pytest.skip("no Docker engine answers and dockerd is not installed (apt-get install docker.io)")
    if os.geteuid() != 0:
        pytest.skip("no Docker engine answers, and starting dockerd needs root")
    with tempfile.NamedTemporaryFile("w+", prefix="dockerd-", suffix=".log", delete=False) as log:
        daemon = subprocess.Popen([dockerd], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not _engine_answers(client):
            exited = _exited_within(daemon, 0.5)  # the pause between polls doubles as a death check
            if exited is not None or time.monotonic() > deadline:
                tail = Path(log.name).read_text()[-3000:]
                pytest.skip(f"dockerd could not start here (exit {exited}); its log ends with:\n{tail}")
        yield client
    finally:
        daemon.terminate()
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()


def _exited_within(process: subprocess.Popen[bytes], seconds: float) -> int | None:
    try:
        return process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return None


@pytest.fixture(scope="module")
def compose(docker: str) -> list[str]:
    """Compose v2: the pinned one of the deploy extra, else the docker CLI plugin."""
    return require_compose()


def _must(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, explain(result)
    return result


@pytest.fixture(scope="module")
def image(docker: str) -> str:
    """The local-store image, built from the offline base image and the host's wheelhouse."""
    if not shutil.which("debootstrap") and run([docker, "image", "inspect", BASE_IMAGE]).returncode != 0:
        pytest.skip(f"no {BASE_IMAGE} image and no debootstrap to build it (apt-get install debootstrap)")
    _must(run(["bash", str(ROOT / "scripts" / "build-base-image.sh"), BASE_IMAGE], timeout=900))
    # The test's own interpreter has pip and reads pyproject.toml.
    wheelhouse = ["bash", str(ROOT / "scripts" / "build-wheelhouse.sh"), "local-store"]
    _must(run(wheelhouse, timeout=600, env={"PYTHON": sys.executable}))
    build = [
        docker,
        "build",
        "--build-arg",
        f"BASE_IMAGE={BASE_IMAGE}",
        "--build-arg",
        "BACKEND=local-store",
        "-t",
        IMAGE,
        str(ROOT),
    ]
    _must(run(build, timeout=900))
    return IMAGE


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Stack:
    compose: list[str]
    env: dict[str, str]
    port: int

    def run(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return run([*self.compose, "-f", str(COMPOSE_FILE), *args], env=self.env, timeout=timeout)


@pytest.fixture(scope="module")
def stack(compose: list[str], image: str) -> Iterator[Stack]:
    """`compose up --wait` (the image's gRPC health check turns healthy), always torn down with -v."""
    port = _free_port()
    env = {
        "COMPOSE_PROJECT_NAME": f"localfleet-test-{os.getpid()}",  # never touches a user's stack
        "LOCALFLEET_TAG": TAG,
        "LOCALFLEET_BIND": "127.0.0.1",
        "LOCAL_STORE_PORT": str(port),
        "LOCALAI_GRPC_AUTH_TOKEN": TOKEN,
    }
    stack = Stack(compose, env, port)
    try:
        up = stack.run("up", "--detach", "--wait", "--wait-timeout", "120", "--no-build", "--pull", "never")
        if up.returncode != 0:
            logs = stack.run("logs", "--no-color")
            pytest.fail(f"compose up failed\n{explain(up)}\ncontainer logs:\n{logs.stdout}{logs.stderr}")
        yield stack
    finally:
        down = stack.run("down", "--volumes", "--remove-orphans", "--timeout", "20")
        assert down.returncode == 0, explain(down)


@contextlib.asynccontextmanager
async def _channel(port: int) -> AsyncIterator[Channel]:
    channel = Channel("127.0.0.1", port)
    try:
        yield channel
    finally:
        channel.close()


async def _wait_serving(port: int, timeout: float = 60) -> None:
    """grpc.health.v1 says SERVING on the published port (no token: probes send none)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            async with _channel(port) as channel:
                reply = await HealthStub(channel).Check(HealthCheckRequest(), timeout=5)
                if reply.status == HealthCheckResponse.SERVING:
                    return
                last = HealthCheckResponse.ServingStatus.Name(reply.status)
        except (OSError, TimeoutError, GRPCError, StreamTerminatedError) as exc:
            last = exc
        await asyncio.sleep(0.2)  # pause between polls while the port opens
    pytest.fail(f"127.0.0.1:{port} not SERVING within {timeout} s (last: {last!r})")


def _key(*floats: float) -> pb.StoresKey:
    return pb.StoresKey(Floats=list(floats))


async def test_health_and_store_round_trip_over_the_published_port(stack: Stack) -> None:
    await _wait_serving(stack.port)
    async with _channel(stack.port) as channel:
        backend = backend_grpc.BackendStub(channel)
        health = await backend.Health(pb.HealthMessage(), metadata=AUTH, timeout=10)
        assert health.message == b"OK"

        stored = await backend.StoresSet(
            pb.StoresSetOptions(
                Keys=[_key(1, 0, 0), _key(0, 1, 0), _key(0, 0, 1)],
                Values=[
                    pb.StoresValue(Bytes=b"east"),
                    pb.StoresValue(Bytes=b"north"),
                    pb.StoresValue(Bytes=b"up"),
                ],
            ),
            metadata=AUTH,
            timeout=10,
        )
        assert stored.success, stored.message

        found = await backend.StoresFind(
            pb.StoresFindOptions(Key=_key(0.9, 0.1, 0), TopK=2), metadata=AUTH, timeout=10
        )
        assert [v.Bytes for v in found.Values] == [b"east", b"north"]
        assert list(found.Keys[0].Floats) == [1, 0, 0]
        assert found.Similarities[0] > found.Similarities[1]


async def test_backend_calls_need_the_token_but_health_checks_do_not(stack: Stack) -> None:
    await _wait_serving(stack.port)
    async with _channel(stack.port) as channel:
        with pytest.raises(GRPCError) as refused:
            await backend_grpc.BackendStub(channel).Health(pb.HealthMessage(), timeout=10)
    assert refused.value.status == Status.UNAUTHENTICATED


def test_container_runs_as_the_non_root_user(stack: Stack) -> None:
    result = _must(stack.run("exec", "-T", "local-store", "id", "-u"))
    assert result.stdout.strip() == "10001"


async def test_store_survives_a_container_restart_on_its_volume(stack: Stack) -> None:
    await _wait_serving(stack.port)
    async with _channel(stack.port) as channel:
        await backend_grpc.BackendStub(channel).StoresSet(
            pb.StoresSetOptions(Keys=[_key(0.5, 0.5, 0.7)], Values=[pb.StoresValue(Bytes=b"kept")]),
            metadata=AUTH,
            timeout=10,
        )
    _must(stack.run("restart", "--timeout", "20", "local-store"))
    await _wait_serving(stack.port)
    async with _channel(stack.port) as channel:
        found = await backend_grpc.BackendStub(channel).StoresFind(
            pb.StoresFindOptions(Key=_key(0.5, 0.5, 0.7), TopK=1), metadata=AUTH, timeout=10
        )
    assert [v.Bytes for v in found.Values] == [b"kept"]
