"""The images end to end: build local-store and transformers offline, start them with compose, call them.

Needs a Docker engine (started here when dockerd is installed and we are root), debootstrap for the
base image, and the `deploy` extra. Run with `pytest -m docker tests/deploy` (nox -s deploy). The
transformers image is the torch-based one CI builds (CPU torch from the wheelhouse, MiniLM bundled).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from localfleet.proto import backend_grpc
from localfleet.proto import backend_pb2 as pb
from tests.deploy.tools import ROOT, build_image, docker_engine, explain, must, require_compose, run

pytestmark = [pytest.mark.docker, pytest.mark.timeout(3600)]

TAG = "test"
COMPOSE_FILE = ROOT / "compose" / "compose.yaml"
TOKEN = "deploy-test-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def docker() -> Iterator[str]:
    with docker_engine() as client:
        yield client


@pytest.fixture(scope="module")
def compose(docker: str) -> list[str]:
    """Compose v2: the pinned one of the deploy extra, else the docker CLI plugin."""
    return require_compose()


@pytest.fixture(scope="module")
def images(docker: str) -> list[str]:
    """The local-store image and the torch-based transformers image, as compose names them."""
    return [build_image(docker, backend, TAG) for backend in ("local-store", "transformers")]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Stack:
    compose: list[str]
    env: dict[str, str]
    port: int
    transformers_port: int

    def run(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return run([*self.compose, "-f", str(COMPOSE_FILE), *args], env=self.env, timeout=timeout)


@pytest.fixture(scope="module")
def stack(compose: list[str], images: list[str]) -> Iterator[Stack]:
    """`compose up --wait` of local-store and (its profile) transformers: every image's gRPC health check
    turns healthy, transformers once MiniLM loaded. Always torn down with -v."""
    port, transformers_port = _free_port(), _free_port()
    env = {
        "COMPOSE_PROJECT_NAME": f"localfleet-test-{os.getpid()}",  # never touches a user's stack
        "LOCALFLEET_TAG": TAG,
        "LOCALFLEET_BIND": "127.0.0.1",
        "LOCAL_STORE_PORT": str(port),
        "TRANSFORMERS_PORT": str(transformers_port),
        "COMPOSE_PROFILES": "transformers",
        "LOCALAI_GRPC_AUTH_TOKEN": TOKEN,
    }
    stack = Stack(compose, env, port, transformers_port)
    try:
        up = stack.run(
            "up", "--detach", "--wait", "--wait-timeout", "300", "--no-build", "--pull", "never", timeout=420
        )
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
    result = must(stack.run("exec", "-T", "local-store", "id", "-u"))
    assert result.stdout.strip() == "10001"


def test_localfleet_on_path_is_the_backend_folders(stack: Stack) -> None:
    # The health check's `localfleet` is the folder's own (bin/localfleet: its Python, its packages).
    found = must(stack.run("exec", "-T", "local-store", "sh", "-c", "command -v localfleet"))
    assert found.stdout.strip() == "/opt/localfleet/bin/localfleet"
    listed = must(stack.run("exec", "-T", "local-store", "localfleet", "list"))
    assert "local-store" in listed.stdout, listed.stdout


async def test_transformers_embeds_with_the_bundled_minilm(stack: Stack) -> None:
    await _wait_serving(stack.transformers_port)
    async with _channel(stack.transformers_port) as channel:
        reply = await backend_grpc.BackendStub(channel).Embedding(
            pb.PredictOptions(Embeddings="a fleet of small servers"), metadata=AUTH, timeout=60
        )
    assert len(reply.embeddings) == 384
    assert any(reply.embeddings)


async def test_store_survives_a_container_restart_on_its_volume(stack: Stack) -> None:
    await _wait_serving(stack.port)
    async with _channel(stack.port) as channel:
        await backend_grpc.BackendStub(channel).StoresSet(
            pb.StoresSetOptions(Keys=[_key(0.5, 0.5, 0.7)], Values=[pb.StoresValue(Bytes=b"kept")]),
            metadata=AUTH,
            timeout=10,
        )
    must(stack.run("restart", "--timeout", "20", "local-store"))
    await _wait_serving(stack.port)
    async with _channel(stack.port) as channel:
        found = await backend_grpc.BackendStub(channel).StoresFind(
            pb.StoresFindOptions(Key=_key(0.5, 0.5, 0.7), TopK=1), metadata=AUTH, timeout=10
        )
    assert [v.Bytes for v in found.Values] == [b"kept"]
