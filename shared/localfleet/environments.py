"""Backend environments: each backend in a virtual environment of its own, beside its `run.sh`.

Engines pin each other out (vLLM's torch and transformers, rfdetr's torchvision), so no environment holds
two backends. The layout is LocalAI's backend folder: `<folder>/run.sh` starts the backend from
`<folder>/.venv`. In a checkout the folder is `services/<name>/` (editable installs: edits apply at once);
`localfleet install --into DIR` makes standalone folders `DIR/<name>/` instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from localfleet.matrix import Build, Matrix, matrix, source_root

log = logging.getLogger("localfleet.environments")

VENV = ".venv"
RUN_SH = "run.sh"
BACKENDS_DIR_ENV = "LOCALFLEET_BACKENDS_DIR"


@dataclass(frozen=True)
class Location:
    """Where a backend is installed, and the command line that starts it (before --addr)."""

    backend: str
    where: str
    argv: tuple[str, ...]


def folder_ready(folder: Path) -> bool:
    return (folder / RUN_SH).is_file() and (folder / VENV / "bin" / "localfleet").is_file()


def locate(backend: str, backends_dir: Path | None = None) -> Location | None:
    """A backend folder under `backends_dir`, the checkout's services/<name>/, or this environment."""
    folders = []
    if backends_dir is not None:
        folders.append(backends_dir / backend)
    try:
        package = matrix().backends.get(backend)
    except LookupError:  # an installed runtime with no source tree: folders and entry points only
        package = None
    if package is not None:
        folders.append(package.folder)
    for folder in folders:
        if folder_ready(folder):
            return Location(backend, str(folder), (str(folder / RUN_SH),))
    from localfleet import catalog  # imports the runtime: not needed to plan an install (noxfile)

    entry = catalog.entries().get(backend)
    if entry is not None and not entry.missing():
        return Location(backend, "this environment", (sys.executable, "-m", "localfleet", "serve", backend))
    return None


def known(backends_dir: Path | None = None) -> list[str]:
    """Every backend name this machine knows of: the source tree's, installed folders', this env's."""
    from localfleet import catalog

    names = set(catalog.entries())
    with contextlib.suppress(LookupError):  # no source tree: what is installed only
        names |= set(matrix().backends)
    if backends_dir is not None and backends_dir.is_dir():
        names |= {p.name for p in backends_dir.iterdir() if folder_ready(p)}
    return sorted(names)


def backends_dir_from_env() -> Path | None:
    value = os.environ.get(BACKENDS_DIR_ENV, "")
    return Path(value) if value else None


# --- installing ------------------------------------------------------------------------------------


def uv_binary() -> str | None:
    beside = Path(sys.executable).parent / "uv"
    if beside.is_file():
        return str(beside)
    return shutil.which("uv")


@dataclass(frozen=True)
class Plan:
    """The commands that build one backend's environment, and the environment they run with."""

    venv: Path
    create: list[str]
    installer: list[str]  # the install command up to its arguments
    args: list[str]  # what to install, and how (indexes, no-binary, overrides)
    env: dict[str, str]
    notes: list[str]
    build_env: dict[str, str]  # what `env` adds to the caller's environment: the builds' own variables

    @property
    def commands(self) -> list[list[str]]:
        return [self.create, self.installer + self.args]


def plan(
    cell: Build,
    venv: Path,
    *,
    m: Matrix,
    editable: bool,
    extras: Iterable[str] = (),
    with_backends: Iterable[str] = (),
    uv: str | None,
    runtime_extras: Iterable[str] = (),
    torch_index_reachable: bool = True,
) -> Plan:
    """Commands for `cell` into `venv`: the runtime, the backend with the build type's extras, and
    `with_backends` (other backends a test environment needs, cpu builds), honouring drop/no-binary."""
    notes: list[str] = []
    python = venv / "bin" / "python"
    # A companion compiled here builds as its own environment builds it (llama-cpp's portable CPU build
    # beside huggingface's tests; a -march=native build of it crashed on another CPU): the backend's own
    # variables win where both set one.
    build_env: dict[str, str] = {}
    for other in with_backends:
        build_env.update(m.build(other, "cpu").build_env)
    build_env.update(cell.build_env)
    env = {**os.environ, **build_env}
    if uv is None:
        create = [sys.executable, "-m", "venv", str(venv)]
        install = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]
    else:
        create = [uv, "venv", "--quiet", "--allow-existing", "--python", sys.executable, str(venv)]
        install = [uv, "pip", "install", "--python", str(python)]
        # uv reads no pip.conf: a mirror or wheel folder configured for pip in the environment counts too.
        for pip_name, uv_name in (("PIP_FIND_LINKS", "UV_FIND_LINKS"), ("PIP_INDEX_URL", "UV_INDEX_URL")):
            if pip_name in env and uv_name not in env:
                env[uv_name] = env[pip_name]
    edit = ["-e"] if editable else []
    runtime = ",".join(dict.fromkeys([*cell.runtime_extras, *runtime_extras]))
    args: list[str] = []
    args += [*edit, f"{m.root / 'shared'}" + (f"[{runtime}]" if runtime else "")]
    own = ",".join(dict.fromkeys([*cell.extras, *extras]))
    args += [*edit, f"{m.backends[cell.backend].folder}" + (f"[{own}]" if own else "")]
    for other in with_backends:
        other_cell = m.build(other, "cpu")
        other_extras = ",".join(other_cell.extras)
        args += [*edit, f"{m.backends[other].folder}" + (f"[{other_extras}]" if other_extras else "")]
    if cell.torch_index:
        if torch_index_reachable:
            args += ["--extra-index-url", cell.torch_index]
        else:
            notes.append(
                f"{cell.torch_index} does not answer: torch comes from the configured indexes and wheel "
                "folders instead (a plain PyPI torch may be another accelerator's build)"
            )
    for package in cell.no_binary:
        args += ["--no-binary", package]
    if cell.drop:
        if uv is None:
            raise RuntimeError(
                f"{cell.backend} ({cell.build_type}) drops {', '.join(cell.drop)} from its dependencies, "
                "which needs uv: pip install uv"
            )
        overrides = Path(tempfile.mkstemp(prefix="localfleet-drop-", suffix=".txt")[1])
        overrides.write_text("".join(f'{p}; sys_platform == "never"\n' for p in cell.drop))
        args += ["--override", str(overrides)]
    return Plan(venv, create, install, args, env, notes, build_env)


def reachable(url: str, timeout: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return True
    except OSError:
        return False


def install(
    backends: list[str],
    build_type: str,
    *,
    into: Path | None,
    models: bool,
) -> None:
    """Build each backend's environment (in the checkout, or standalone folders under `into`)."""
    m = matrix()
    uv = uv_binary()
    for backend in backends:
        cell = m.build(backend, build_type)
        folder = m.backends[backend].folder if into is None else into / backend
        extras = ["models"] if models and "models" in m.backends[backend].extras else []
        index_ok = reachable(cell.torch_index) if cell.torch_index else True
        steps = plan(
            cell,
            folder / VENV,
            m=m,
            editable=into is None,
            extras=extras,
            uv=uv,
            torch_index_reachable=index_ok,
        )
        if cell.reason:
            log.info("%s has no %s build (%s): installing its cpu build", backend, build_type, cell.reason)
        for note in steps.notes:
            log.warning("%s: %s", backend, note)
        if into is not None:
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy2(m.root / "scripts" / "run-backend.sh", folder / RUN_SH)
            (folder / "BACKEND").write_text(backend + "\n")
            (folder / "BUILD_TYPE").write_text(cell.uses + "\n")
        log.info("installing %s (%s build) into %s", backend, cell.uses, steps.venv)
        for command in steps.commands:
            done = subprocess.run(command, env=steps.env, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"installing {backend} failed ({command[0]} exited {done.returncode})")
        log.info("%s ready: %s", backend, folder / RUN_SH)


def describe(backend: str, backends_dir: Path | None) -> tuple[str, str]:
    """(state, hint) for `localfleet list`."""
    location = locate(backend, backends_dir)
    if location is not None:
        return f"installed ({location.where})", ""
    try:
        source_root()
    except LookupError:
        return "not installed", f"pip install the localfleet-{backend} package beside localfleet"
    return "not installed", f"localfleet install {backend}"
