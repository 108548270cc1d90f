"""The `localfleet` command as a person uses it: list, call, up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from localfleet.testing import spawn
from tests.import_probe import imported_before_load

pytestmark = pytest.mark.timeout(120)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "localfleet", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_list_shows_every_backend_and_where_it_is_installed() -> None:
    out = cli("list")
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line.split(None, 1)[1] for line in out.stdout.splitlines()[1:]}
    assert rows["local-store"].startswith("installed (")  # this environment, or the checkout's services/
    assert set(rows) >= {"local-store", "transformers", "llama-cpp", "piper"}  # the source tree's too


def test_call_drives_a_store_from_the_shell() -> None:
    with spawn("local-store") as proc:
        assert cli("call", proc.addr, "health").stdout.strip() == "OK"
        assert cli("call", proc.addr, "ready").stdout.strip() == "SERVING"
        loaded = cli("call", proc.addr, "load", "store://shell")
        assert loaded.returncode == 0, loaded.stderr
        assert loaded.stdout.startswith("ok: ")
        put = cli(
            "call",
            proc.addr,
            "stores-set",
            "--key",
            "[1, 0]",
            "--value",
            "east",
            "--key",
            "[0, 1]",
            "--value",
            "north",
        )
        assert put.returncode == 0, put.stderr
        found = cli("call", proc.addr, "stores-find", "--key", "[0.9, 0.1]", "--top-k", "2")
        lines = found.stdout.strip().splitlines()
        assert lines[0].endswith("east")
        assert lines[0].startswith("+0.99")
        assert lines[1].endswith("north")
        status = cli("call", proc.addr, "status")
        assert "state: READY" in status.stdout


def test_call_reports_errors_readably() -> None:
    with spawn("local-store") as proc:
        refused = cli("call", proc.addr, "load", "model.gguf")
        assert refused.returncode == 1
        assert refused.stdout.startswith("failed: local-store cannot serve 'model.gguf'")
        early = cli("call", proc.addr, "stores-find", "--key", "[1, 2]")
        assert early.returncode == 1
        assert "error: FAILED_PRECONDITION: no model loaded; call LoadModel first" in early.stderr
        bad = cli("call", proc.addr, "stores-set", "--key", "one", "--value", "x")
        assert bad.returncode == 1
        assert "must be a JSON list of numbers" in bad.stderr
    gone = cli("call", proc.addr, "health", "--timeout", "2")
    assert gone.returncode == 1
    assert f"cannot reach {proc.addr}" in gone.stderr


def test_call_sends_the_token() -> None:
    with spawn("local-store", env={"LOCALAI_GRPC_AUTH_TOKEN": "tok"}) as proc:
        denied = cli("call", proc.addr, "health", env={"LOCALAI_GRPC_AUTH_TOKEN": ""})
        assert "UNAUTHENTICATED" in denied.stderr
        assert cli("call", proc.addr, "health", "--token", "tok").stdout.strip() == "OK"


def test_up_prints_the_line_for_core_restarts_a_crashed_backend_and_stops_cleanly() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    up = subprocess.Popen(
        [sys.executable, "-m", "localfleet", "up", "local-store", "--model", "local-store=store://default"],
        start_new_session=True,  # its own process group, like a shell job
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert up.stdout is not None
        line = up.stdout.readline().strip()
        assert line.startswith("LOCALAI_EXTERNAL_GRPC_BACKENDS=local-store:127.0.0.1:")
        addr = line.split("=", 1)[1].split(":", 1)[1]
        assert cli("call", addr, "ready").returncode == 0  # the start-up store is loaded
        pid = _child_pid(up.pid)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if cli("call", addr, "health", "--timeout", "1").returncode == 0 and _child_pid(up.pid) != pid:
                break
        else:
            pytest.fail("the crashed backend was not restarted")
        backend = psutil.Process(_child_pid(up.pid))
        os.killpg(up.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole foreground group
        assert up.wait(30) == 0
        backend.wait(30)
        assert up.stderr is not None
        log = up.stderr.read()
        assert "local-store stopped" in log  # drained by `up`, not cut short by a second signal
        assert "exiting now" not in log
        assert cli("call", addr, "health", "--timeout", "1").returncode == 1
    finally:
        if up.poll() is None:
            up.kill()
        up.wait()


def _child_pid(parent: int) -> int:
    children = psutil.Process(parent).children()
    return children[0].pid if children else -1


def test_serving_imports_no_engine_before_load() -> None:
    """The port opens before any heavy import: numpy (and torch...) come with LoadModel."""
    assert imported_before_load("local-store", ("numpy", "torch", "llama_cpp")) == "none"
