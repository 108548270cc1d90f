"""A backend folder installed the way LocalAI installs one, and started the way core starts it.

LocalAI's gallery pulls a backend's image, unpacks its files into <backends>/<name>/ and runs
`run.sh --addr 127.0.0.1:PORT` with that folder as cwd; core's own image has no Python. So: build the
local-store `gallery` target (FROM scratch), `docker create` + `docker export` it, unpack it elsewhere,
and start run.sh in a container of the base image whose Python packages were purged first, sharing the
host's network so core's loopback address is ours. Then Health, LoadModel and StoresSet/Find over gRPC.

The same folder built natively (scripts/backend-folder.sh, as for metal on macOS) must move too.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from localfleet.client import connect, wait_healthy
from localfleet.proto import backend_pb2 as pb
from localfleet.testing import free_port
from tests.deploy.tools import ROOT, base_image, build_image, docker_engine, explain, find_tool, must, run

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]

# What `docker export` adds to any container's files; not part of the image.
DOCKER_ENTRIES = {".dockerenv", "dev", "proc", "sys", "etc"}
# Removes every Debian package with python in its name (and what is left of them), then fails if any
# python is still to be found: the backend below can only run on the folder's own interpreter.
PURGE_PYTHON = (
    "dpkg --purge --force-depends --force-remove-essential "
    "$(dpkg-query -W -f '${Package}\\n' | grep python) >/dev/null 2>&1; "
    "rm -rf /usr/lib/python3* /usr/local/lib/python3* /usr/bin/python3*; "
    "if command -v python3 || command -v python3.11 || command -v python; then exit 99; fi; "
)


@pytest.fixture(scope="module")
def docker() -> Iterator[str]:
    with docker_engine() as client:
        yield client


def _unpack_export(docker: str, image: str, into: Path) -> None:
    created = must(run([docker, "create", image, "/run.sh"]))  # never started: a scratch image has no shell
    container = created.stdout.strip()
    into.mkdir(parents=True)
    archive = into.parent / "export.tar"
    try:
        must(run([docker, "export", "--output", str(archive), container], timeout=300))
    finally:
        run([docker, "rm", container])
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.split("/")[0] not in DOCKER_ENTRIES]
        tar.extractall(into, members=members, filter="tar")
    archive.unlink()


@pytest.fixture(scope="module")
def installed(docker: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The gallery image's files in a LocalAI backends folder, far from /opt/localfleet."""
    image = build_image(docker, "local-store", "gallery-test", target="gallery")
    folder = tmp_path_factory.mktemp("localai") / "backends" / "cpu-localfleet-local-store"
    _unpack_export(docker, image, folder)
    return folder


async def _store_round_trip(addr: str) -> None:
    await wait_healthy(addr, 60)
    async with connect(addr) as client:
        assert await client.healthy()
        loaded = await client.backend.LoadModel(pb.ModelOptions(Model="store://gallery"), timeout=30)
        assert loaded.success, loaded.message
        stored = await client.backend.StoresSet(
            pb.StoresSetOptions(
                Keys=[pb.StoresKey(Floats=[1, 0]), pb.StoresKey(Floats=[0, 1])],
                Values=[pb.StoresValue(Bytes=b"east"), pb.StoresValue(Bytes=b"north")],
            ),
            timeout=10,
        )
        assert stored.success, stored.message
        found = await client.backend.StoresFind(
            pb.StoresFindOptions(Key=pb.StoresKey(Floats=[0.9, 0.1]), TopK=1), timeout=10
        )
        assert [v.Bytes for v in found.Values] == [b"east"]


def test_the_gallery_image_is_the_backend_folder(installed: Path) -> None:
    assert (installed / "run.sh").stat().st_mode & 0o111
    assert (installed / "BACKEND").read_text().strip() == "local-store"
    assert (installed / "python" / "bin" / "python3").exists()
    assert not (installed / ".venv").exists(), "a venv names its interpreter by absolute path"
    assert not str(installed).startswith("/opt/localfleet")


async def test_core_starts_the_unpacked_folder_with_no_python_around(docker: str, installed: Path) -> None:
    port = free_port()
    name = f"localfleet-gallery-test-{os.getpid()}"
    command = f"{PURGE_PYTHON}cd '{installed}' && exec ./run.sh --addr 127.0.0.1:{port}"
    started = run(
        [
            docker, "run", "--detach", "--init", "--name", name, "--network", "host",
            "--volume", f"{installed}:{installed}", base_image(docker), "sh", "-c", command,
        ]
    )  # fmt: skip
    assert started.returncode == 0, explain(started)
    try:
        await _store_round_trip(f"127.0.0.1:{port}")
        # Still nothing else to run Python with, while the backend serves.
        left = run([docker, "exec", name, "sh", "-c", "ls -d /usr/lib/python3* /usr/bin/python3*"])
        assert left.returncode != 0, explain(left)
    except BaseException:
        print(run([docker, "logs", name]).stderr)
        raise
    finally:
        run([docker, "rm", "--force", name], timeout=60)


@pytest.fixture(scope="module")
def wheelhouse() -> Path:
    """The local-store cpu wheels (the metal cell installs the same packages)."""
    must(run(["bash", str(ROOT / "scripts" / "build-wheelhouse.sh"), "local-store", "cpu"], timeout=900))
    return ROOT / "build" / "wheelhouse"


def test_a_native_folder_builds_and_still_starts_after_a_move(wheelhouse: Path, tmp_path: Path) -> None:
    # metal's layout on Linux: the macOS-only steps (uv's Python, Metal) are the script's, marked there.
    built = tmp_path / "built"
    env = {"WHEELHOUSE": str(wheelhouse)}
    uv = find_tool("uv")
    if uv is not None:
        env["UV"] = uv
    script = ["bash", str(ROOT / "scripts" / "backend-folder.sh"), "local-store", "metal", str(built)]
    must(run(script, env=env, timeout=900))
    moved = tmp_path / "elsewhere" / "local-store"
    moved.parent.mkdir()
    shutil.move(built, moved)
    port = free_port()
    server = subprocess.Popen(
        ["./run.sh", "--addr", f"127.0.0.1:{port}"],
        cwd=moved,
        env={"PATH": "/usr/bin:/bin", "LOCALAI_BACKEND_PARENT_WATCH": "false"},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        asyncio.run(_store_round_trip(f"127.0.0.1:{port}"))
        # run.sh exec'd the folder's own interpreter.
        assert Path(f"/proc/{server.pid}/exe").resolve().is_relative_to(moved)
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=60)
    assert server.returncode == 0, stderr
