"""A fleet across environments: `localfleet install` builds one environment per backend, `up` starts them.

Runs in the runtime's own light environment (no numpy, no engines): every backend here lives in a folder
of its own (run.sh + .venv), as LocalAI lays out a backend, and is started from there.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from localfleet.client import connect
from localfleet.proto import backend_pb2 as pb
from localfleet.testing import free_port

pytestmark = pytest.mark.timeout(900)

FLEET = ("local-store", "silero-vad")


def localfleet(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "localfleet", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def backends_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two backends, each installed into a folder of its own by the real installer (uv, cached wheels)."""
    into = tmp_path_factory.mktemp("backends")
    done = localfleet("install", *FLEET, "--into", str(into), timeout=840)
    assert done.returncode == 0, done.stderr[-3000:]
    return into


def test_the_runtime_environment_holds_no_engine() -> None:
    assert importlib.util.find_spec("numpy") is None
    assert importlib.util.find_spec("localfleet_local_store") is None


def test_install_makes_a_backend_folder_each_with_its_own_environment(backends_dir: Path) -> None:
    for name in FLEET:
        folder = backends_dir / name
        assert os.access(folder / "run.sh", os.X_OK)
        assert (folder / "BACKEND").read_text().strip() == name
        python = folder / ".venv" / "bin" / "python"
        probe = "import importlib.metadata as m; print([e.name for e in m.entry_points(group=GROUP)])"
        probe = probe.replace("GROUP", repr("localfleet.backends"))
        held = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True).stdout
        assert held.strip() == repr([name])  # its own backend, and no other


def test_list_names_where_each_backend_is_installed(backends_dir: Path) -> None:
    listed = localfleet("list", "--backends-dir", str(backends_dir))
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line for line in listed.stdout.splitlines()[1:]}
    for name in FLEET:
        assert f"installed ({backends_dir / name})" in rows[name]
    assert "not installed" in rows["transformers"]
    assert "localfleet install transformers" in rows["transformers"]


@contextlib.contextmanager
def started_up(backends_dir: Path, *args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`localfleet up` of the two backends; yields it and its first line of stdout (core's line)."""
    up = subprocess.Popen(
        [sys.executable, "-m", "localfleet", "up", *FLEET, "--backends-dir", str(backends_dir), *args],
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert up.stdout is not None
        yield up, up.stdout.readline().strip()
    finally:
        if up.poll() is None:
            up.kill()
        up.wait()


def _addrs(line: str) -> dict[str, str]:
    assert line.startswith("LOCALAI_EXTERNAL_GRPC_BACKENDS="), line
    return dict(item.split(":", 1) for item in line.split("=", 1)[1].split(","))


@pytest.fixture
def fleet(backends_dir: Path) -> Iterator[tuple[subprocess.Popen[str], dict[str, str]]]:
    with started_up(backends_dir, "--model", "local-store=store://default") as (up, line):
        yield up, _addrs(line)


async def test_up_serves_backends_from_their_own_environments_and_drains_on_ctrl_c(
    fleet: tuple[subprocess.Popen[str], dict[str, str]], backends_dir: Path
) -> None:
    up, addrs = fleet
    assert sorted(addrs) == sorted(FLEET)
    children = psutil.Process(up.pid).children()
    assert len(children) == len(FLEET)
    # Each child runs its own environment's interpreter, not this one's.
    interpreters = sorted(
        os.path.basename(os.path.dirname(os.path.dirname(os.path.dirname(child.cmdline()[0]))))
        for child in children
    )
    assert interpreters == sorted(FLEET), [c.cmdline() for c in children]
    async with connect(addrs["local-store"]) as store:
        await store.backend.StoresSet(
            pb.StoresSetOptions(Keys=[pb.StoresKey(Floats=[1, 0])], Values=[pb.StoresValue(Bytes=b"east")])
        )
        found = await store.backend.StoresFind(
            pb.StoresFindOptions(Key=pb.StoresKey(Floats=[0.9, 0.1]), TopK=1)
        )
        assert list(found.Values) == [pb.StoresValue(Bytes=b"east")]
    async with connect(addrs["silero-vad"]) as vad:
        assert (await vad.backend.Health(pb.HealthMessage())).message == b"OK"
        loaded = await vad.backend.LoadModel(pb.ModelOptions(Model="silero-vad"))
        assert loaded.success, loaded.message
    os.killpg(up.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole foreground group
    assert up.wait(60) == 0
    for child in children:
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    assert up.stderr is not None
    log = up.stderr.read()
    assert "exiting now" not in log  # each drained once, not cut short by a second signal


def test_install_refuses_an_unknown_backend_or_build_type_by_name() -> None:
    unknown = localfleet("install", "no-such-backend")
    assert unknown.returncode == 2
    assert "unknown backend 'no-such-backend'" in unknown.stderr
    wrong = localfleet("install", "local-store", "--build-type", "cuda")
    assert wrong.returncode == 2
    assert "unknown build type 'cuda'" in wrong.stderr
    assert "cublas12" in wrong.stderr


def test_up_names_the_install_command_for_a_backend_that_is_not_installed(tmp_path: Path) -> None:
    ran = localfleet("up", "transformers", "--backends-dir", str(tmp_path))
    assert ran.returncode == 2
    assert "backend transformers is not installed; localfleet install transformers" in ran.stderr


def _folder_of(interpreter: str) -> str:
    """The backend folder an interpreter belongs to: <folder>/.venv/bin/python."""
    return Path(interpreter).parents[2].name


@pytest.mark.parametrize(
    ("flag", "said"),
    [
        ("local-store", "--model 'local-store': expected BACKEND=MODEL"),
        ("local-stor=store://x", "'local-stor' is not a backend of this fleet; did you mean 'local-store'?"),
        ("rerankers=x", "'rerankers' is not a backend of this fleet; this fleet is: local-store, silero-vad"),
    ],
)
def test_up_refuses_a_model_flag_it_cannot_place(backends_dir: Path, flag: str, said: str) -> None:
    ran = localfleet("up", *FLEET, "--backends-dir", str(backends_dir), "--model", flag)
    assert ran.returncode == 2, ran.stderr
    assert said in ran.stderr


def _two_free_ports() -> int:
    """A port whose next one is free too (checked, then released: the fleet binds them next)."""
    while True:
        port = free_port()
        with contextlib.suppress(OSError), socket.socket() as sock:
            sock.bind(("127.0.0.1", port + 1))
            return port


def test_up_keeps_the_ports_it_is_given(backends_dir: Path) -> None:
    base = _two_free_ports()
    with started_up(backends_dir, "--port-base", str(base)) as (_, line):
        assert _addrs(line) == {"local-store": f"127.0.0.1:{base}", "silero-vad": f"127.0.0.1:{base + 1}"}
    port = free_port()
    with started_up(backends_dir, "--port", f"silero-vad={port}") as (_, line):
        assert _addrs(line)["silero-vad"] == f"127.0.0.1:{port}"


def test_up_names_a_port_that_is_taken(backends_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ran = localfleet("up", *FLEET, "--backends-dir", str(backends_dir), "--port", f"local-store={port}")
    assert ran.returncode == 2
    assert f"local-store: port 127.0.0.1:{port} cannot be used" in ran.stderr


def test_up_stops_on_a_start_up_model_that_fails_unless_told_to_keep_going(backends_dir: Path) -> None:
    refused = "local-store=default"  # a store is loaded as store://<name>
    with started_up(backends_dir, "--model", refused) as (up, line):
        assert line == ""  # no line for core: the fleet is not what was asked for
        assert up.wait(60) == 1
        assert up.stderr is not None
        assert "local-store: " in up.stderr.read()
    with started_up(backends_dir, "--model", refused, "--keep-going") as (up, line):
        assert sorted(_addrs(line)) == sorted(FLEET)
        assert up.poll() is None
