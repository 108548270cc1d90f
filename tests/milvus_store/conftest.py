"""A real Milvus engine process for the tests: `milvus-lite server` on a free loopback port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from localfleet.testing import free_port


@dataclass
class Engine:
    """One Milvus Lite server process; `stop` and `start` keep its port and data folder."""

    data: Path
    port: int
    popen: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> None:
        binary = shutil.which("milvus-lite", path=str(Path(sys.executable).parent))
        assert binary, "milvus-lite is not installed beside this Python"
        self.popen = subprocess.Popen(
            [binary, "server", "--data-dir", str(self.data), "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            assert self.popen.poll() is None, f"milvus-lite exited with {self.popen.returncode}"
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                assert time.monotonic() < deadline, f"milvus-lite did not listen within {timeout} s"
                time.sleep(0.05)  # a retry pause while the port opens, not a wait for a result

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()  # as a crash would: no goodbye to its clients
            self.popen.wait()
        self.popen = None


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """The engine the conformance tests share; each test uses its own collections."""
    running = Engine(tmp_path_factory.mktemp("milvus"), free_port())
    running.start()
    yield running
    running.stop()


@pytest.fixture
def own_engine(tmp_path: Path) -> Iterator[Engine]:
    """An engine for one test, which may stop and start it."""
    running = Engine(tmp_path / "milvus", free_port())
    running.start()
    yield running
    running.stop()
