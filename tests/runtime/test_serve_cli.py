"""`localfleet serve` as a person types it: mistakes end with one line that names the fix, no traceback."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from localfleet import catalog
from localfleet.cli import serve

WORKBENCH = "tests.runtime.workbench:Workbench"


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "localfleet", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (
            ["--addr", "nonsense"],
            "bad setting --addr (env LOCALFLEET_ADDR): address 'nonsense' must be HOST:PORT",
        ),
        (["--concurrency", "0"], "bad setting --concurrency (env LOCALFLEET_CONCURRENCY): Input should be"),
        (["--metrics-addr", "9090"], "bad setting --metrics-addr (env LOCALFLEET_METRICS_ADDR)"),
    ],
)
def test_a_bad_setting_is_one_line_naming_flag_and_variable(args: list[str], said: str) -> None:
    ran = _serve(WORKBENCH, *args)
    assert ran.returncode == 2
    assert said in ran.stderr
    assert "Traceback" not in ran.stderr
    assert "errors.pydantic.dev" not in ran.stderr


def test_an_address_in_use_is_named_without_a_traceback() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ran = _serve(WORKBENCH, "--addr", f"127.0.0.1:{port}")
    assert ran.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in ran.stderr
    assert "Traceback" not in ran.stderr


def test_a_backend_not_in_this_environment_names_the_install_command() -> None:
    ran = _serve("llama-cpp")  # the runtime's test environment holds no backend
    assert ran.returncode == 2
    assert "install it: localfleet install llama-cpp" in ran.stderr


def test_a_backend_whose_engine_is_missing_says_so_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    class Half(catalog.Entry):
        def missing(self) -> list[str]:
            return ["llama-cpp-python==0.3.36"]

    monkeypatch.setattr(catalog, "find", lambda name: Half(name, WORKBENCH, "localfleet-llama-cpp"))
    with pytest.raises(LookupError) as err:
        serve._backend_class("llama-cpp")
    assert "its engine is not installed in this environment (missing: llama-cpp-python==0.3.36)" in str(
        err.value
    )
    assert "localfleet install llama-cpp" in str(err.value)


def test_help_of_one_backend_lists_its_load_model_options() -> None:
    ran = _serve(WORKBENCH, "--help")
    assert ran.returncode == 0
    assert "LoadModel options (--option KEY:VALUE):" in ran.stdout
    assert "load_seconds (float, default 0.0)" in ran.stdout
