"""A fleet across environments: `localfleet install` builds one environment per backend, `up` starts them.

Runs in the runtime's own light environment (no numpy, no engines): every backend here lives in a folder
of its own (run.sh + .venv), as LocalAI lays out a backend, and is started from there.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from localfleet.client import connect
from localfleet.proto import backend_pb2 as pb

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


@pytest.fixture
def fleet(backends_dir: Path) -> Iterator[tuple[subprocess.Popen[str], dict[str, str]]]:
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "localfleet",
            "up",
            *FLEET,
            "--backends-dir",
            str(backends_dir),
            "--model",
            "local-store=store://default",
        ],
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert up.stdout is not None
        line = up.stdout.readline().strip()
        assert line.startswith("LOCALAI_EXTERNAL_GRPC_BACKENDS="), line
        addrs = dict(item.split(":", 1) for item in line.split("=", 1)[1].split(","))
        yield up, addrs
    finally:
        if up.poll() is None:
            up.kill()
        up.wait()


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
