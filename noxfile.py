"""Project sessions: `nox -s lint types tests` is the README's test command; `deploy` needs Docker.

Every backend is tested in an environment of its own (`tests-<backend>`), built from its own declared
dependencies exactly as `localfleet install` builds it (localfleet.environments.plan), plus its `test`
extra and the other backends its tests use (`test-with`). The runtime's own tests run in a light
environment (no numpy, no torch). Environments are built with uv: one shared cache, so a wheel is
downloaded, or llama-cpp-python compiled, once for all of them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "shared"))  # the matrix reader is stdlib-only: no install needed to read it

from localfleet.environments import plan, reachable  # noqa: E402 (after the path above)
from localfleet.matrix import load  # noqa: E402

MATRIX = load(ROOT)
BACKENDS = sorted(MATRIX.backends)

nox.options.sessions = ["lint", "types", "tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True
nox.options.default_venv_backend = "uv"

# uv reads no pip.conf: a wheel folder given to pip (these machines keep torch's CPU build in one) counts.
if os.environ.get("PIP_FIND_LINKS") and not os.environ.get("UV_FIND_LINKS"):
    os.environ["UV_FIND_LINKS"] = os.environ["PIP_FIND_LINKS"]

RUNTIME = ["-e", "shared[dev,deploy,install]"]
# The runtime's own tests: no backend installed beside them.
RUNTIME_TESTS = ["tests/runtime", "tests/test_contract.py", "tests/test_fleet.py", "tests/deploy"]
RUNTIME_TYPED = ["shared", "protos", "noxfile.py", "scripts/matrix_files.py", "scripts/cell.py"]
RUNTIME_TYPED += RUNTIME_TESTS
RUNTIME_TYPED += ["tests/conftest.py", "tests/cli_run.py", "tests/import_probe.py", "tests/wording.py"]


def tests_folder(backend: str) -> str:
    return f"tests/{backend.replace('-', '_')}"


def mypy_path(*backends: str) -> str:
    """The source folders of what an environment holds (editable installs hide them from mypy)."""
    return os.pathsep.join([str(ROOT / "shared"), *(str(MATRIX.backends[b].folder) for b in backends)])


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff==0.17.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def types(session: nox.Session) -> None:
    """The runtime, strict; each backend is type-checked in its own environment by tests-<backend>."""
    # The audio and images extras too: localfleet.audio, `call vad` and localfleet.pictures import numpy,
    # av, soundfile and Pillow when used.
    session.install("-e", "shared[dev,deploy,install,audio,images]")
    session.run("mypy", *RUNTIME_TYPED, env={"MYPYPATH": mypy_path()})


@nox.session
def tests(session: nox.Session) -> None:
    """The runtime's tests here, then every backend's in its own environment (tests-<backend>)."""
    session.install(*RUNTIME)
    session.run("pytest", *RUNTIME_TESTS, *session.posargs)
    for backend in BACKENDS:
        session.notify(f"tests-{backend}", session.posargs)


def install_backend(session: nox.Session, backend: str) -> None:
    """The backend's cpu build as `localfleet install` makes it, with its tests' extras and companions."""
    cell = MATRIX.build(backend, "cpu")
    steps = plan(
        cell,
        Path(session.virtualenv.location),
        m=MATRIX,
        editable=True,
        extras=["test"],
        with_backends=MATRIX.backends[backend].test_with,
        uv="uv",
        runtime_extras=["dev"],
        torch_index_reachable=not cell.torch_index or reachable(cell.torch_index),
    )
    for note in steps.notes:
        session.log(note)
    # Shown, not captured: a first run compiles llama-cpp-python for minutes and should say so.
    session.install(*steps.args, env=steps.build_env, silent=False)


def _backend_session(backend: str) -> None:
    package = MATRIX.backends[backend]

    @nox.session(name=f"tests-{backend}")
    def run(session: nox.Session) -> None:
        install_backend(session, backend)
        typed = [str(package.folder), tests_folder(backend), *package.benchmarks]
        held = mypy_path(backend, *package.test_with)
        session.run("mypy", "--cache-dir", f".mypy_cache/{backend}", *typed, env={"MYPYPATH": held})
        session.run("pytest", tests_folder(backend), *session.posargs)


for _name in BACKENDS:
    _backend_session(_name)


@nox.session
def deploy(session: nox.Session) -> None:
    """Build the base image and local-store image, `docker compose up --wait`, call it from the host."""
    session.install(*RUNTIME)
    session.run("bash", "scripts/ci-deploy.sh", external=True)
    session.run("pytest", "-m", "docker", "tests/deploy", *session.posargs)


@nox.session
def protos(session: nox.Session) -> None:
    """Regenerate shared/localfleet/proto from protos/backend.proto (commit the result)."""
    session.install(*RUNTIME)
    session.run("python", "protos/generate.py")


def _bench_session(backend: str) -> None:
    @nox.session(name=f"bench-{backend}")
    def run(session: nox.Session) -> None:
        install_backend(session, backend)
        for script in MATRIX.backends[backend].benchmarks:
            session.run("python", script, *session.posargs)


for _name in BACKENDS:
    if MATRIX.backends[_name].benchmarks:
        _bench_session(_name)


@nox.session
def bench(session: nox.Session) -> None:
    """Every benchmark, each in its backend's environment (bench-<backend>)."""
    for backend in BACKENDS:
        if MATRIX.backends[backend].benchmarks:
            session.notify(f"bench-{backend}")
