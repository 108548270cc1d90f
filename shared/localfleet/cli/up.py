"""`localfleet up [BACKEND...]`: a local fleet, one child process per backend, for LocalAI core to use.

Prints the `LOCALAI_EXTERNAL_GRPC_BACKENDS=...` line, restarts a backend that crashes (with a growing
pause, so a backend that cannot start does not spin), and on Ctrl-C or SIGTERM drains them all.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import difflib
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("localfleet.up")

_MAX_PAUSE = 30.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("backends", nargs="*", help="backends to start (default: every installed one)")
    parser.add_argument(
        "--backends-dir",
        type=Path,
        help="folder of backend folders made by `localfleet install --into` (env LOCALFLEET_BACKENDS_DIR); "
        "else each backend's services/<name>/.venv, else this environment",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address the backends listen on (default: %(default)s)"
    )
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="BACKEND=MODEL",
        help="a start-up model for one backend, e.g. local-store=store://default; repeat it per backend",
    )
    ports = parser.add_mutually_exclusive_group()
    ports.add_argument(
        "--port-base",
        type=_port,
        metavar="PORT",
        help="fixed ports: the backends, in the order named, listen on PORT, PORT+1, ... (default: free "
        "ports, new on every start)",
    )
    ports.add_argument(
        "--port",
        action="append",
        default=[],
        metavar="BACKEND=PORT",
        help="a fixed port for one backend (repeat it); the others get free ports",
    )
    parser.add_argument(
        "--start-timeout",
        type=float,
        default=120.0,
        help="seconds to wait for each backend to answer and load its start-up model (default: %(default)s)",
    )
    parser.add_argument(
        "--keep-going",
        action="store_true",
        help="when a start-up model fails to load, report it and serve on without it (default: stop the "
        "fleet and exit 1)",
    )
    parser.set_defaults(run=run)


@dataclass
class Child:
    name: str
    addr: str
    argv: list[str]
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started: float = field(default=0.0)


def run(args: argparse.Namespace) -> int:
    from localfleet import environments, logs

    logs.configure("INFO", "text", "up")
    backends_dir = args.backends_dir or environments.backends_dir_from_env()
    names = args.backends or environments.known(backends_dir)
    # Each backend runs from its own environment (its run.sh), or from this one when it is installed here.
    where = {name: environments.locate(name, backends_dir) for name in names}
    missing = [name for name, location in where.items() if location is None]
    if args.backends and missing:
        for name in missing:
            _, hint = environments.describe(name, backends_dir)
            log.error("backend %s is not installed%s", name, f"; {hint}" if hint else "")
        return 2
    try:
        models = _pairs(args.model, "--model", "MODEL", names)
        ports = _ports(args, [n for n, location in where.items() if location is not None])
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    children = []
    for name, location in where.items():
        if location is None:
            continue
        addr = f"{args.host}:{ports.get(name) or _free_port(args.host)}"
        argv = [*location.argv, "--addr", addr]
        if name in models:
            argv += ["--model", models[name]]
        log.info("%s from %s", name, location.where)
        children.append(Child(name, addr, argv))
    if not children:
        log.error("no backend is installed; `localfleet install NAME` builds one (`localfleet list`)")
        return 2
    return asyncio.run(_fleet(children, args.start_timeout, args.keep_going))


def _port(text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port (1-65535)")
    return port


def _pairs(items: list[str], flag: str, what: str, names: list[str]) -> dict[str, str]:
    """BACKEND=VALUE flags, each naming a backend of this fleet."""
    pairs: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise ValueError(f"{flag} {item!r}: expected BACKEND={what}, e.g. {flag} local-store=...")
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"this fleet is: {', '.join(names)}"
            raise ValueError(f"{flag} {item!r}: {name!r} is not a backend of this fleet; {hint}")
        if name in pairs:
            raise ValueError(f"{flag}: {name!r} is given twice")
        pairs[name] = value
    return pairs


def _ports(args: argparse.Namespace, names: list[str]) -> dict[str, int]:
    """Fixed ports asked for, checked free now so a clash is named before anything starts."""
    if args.port_base is not None:
        ports = {name: args.port_base + i for i, name in enumerate(names)}
    else:
        ports = {}
        for name, text in _pairs(args.port, "--port", "PORT", names).items():
            try:
                ports[name] = _port(text)
            except (ValueError, argparse.ArgumentTypeError):
                raise ValueError(f"--port {name}={text}: not a TCP port (1-65535)") from None
    if len(set(ports.values())) != len(ports):
        raise ValueError(f"two backends share a port: {ports}")
    for name, port in ports.items():
        if port > 65535:
            raise ValueError(f"--port-base {args.port_base}: {name} would get {port}, past 65535")
        try:
            with socket.socket() as sock:
                sock.bind((args.host, port))
        except OSError as exc:
            raise ValueError(f"{name}: port {args.host}:{port} cannot be used ({exc.strerror})") from None
    return ports


async def _fleet(children: list[Child], start_timeout: float, keep_going: bool = False) -> int:
    from localfleet.client import wait_healthy, wait_loaded

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    for child in children:
        await _start(child)
    try:
        await asyncio.gather(*(wait_healthy(c.addr, start_timeout) for c in children))
        # The line for core means "ready to serve": every start-up model loaded, not just listening.
        loading = [c for c in children if "--model" in c.argv]
        for child in loading:
            log.info("loading %s's start-up model...", child.name)
        loads = await asyncio.gather(
            *(wait_loaded(c.addr, start_timeout) for c in loading), return_exceptions=True
        )
    except (TimeoutError, RuntimeError) as exc:
        log.error("%s", exc)
        await _stop_all(children)
        return 1
    failed = [(c, e) for c, e in zip(loading, loads, strict=True) if isinstance(e, BaseException)]
    for child, error in failed:
        log.error("%s: %s", child.name, error)
    if failed and not keep_going:
        log.error("stopping the fleet: a start-up model did not load (--keep-going serves on without it)")
        await _stop_all(children)
        return 1
    line = ",".join(f"{c.name}:{c.addr}" for c in children)
    print(f"LOCALAI_EXTERNAL_GRPC_BACKENDS={line}", flush=True)
    log.info("fleet up: %s (Ctrl-C stops it)", line)
    watchers = [asyncio.create_task(_keep_running(c, stopping)) for c in children]
    await stopping.wait()
    log.info("stopping the fleet")
    for task in watchers:
        task.cancel()
    await asyncio.gather(*watchers, return_exceptions=True)
    await _stop_all(children)
    return 0


async def _start(child: Child) -> None:
    # Its own session: a terminal's Ctrl-C reaches only `up`, which then drains each child with one
    # SIGTERM (a second signal would make a child exit at once). If `up` dies, the parent watch ends them.
    # The parent watch, on: a child of `up` ends with it, however `up` ends (run.sh sets it too).
    env = {**os.environ, "LOCALAI_BACKEND_PARENT_WATCH": "true"}
    child.process = await asyncio.create_subprocess_exec(*child.argv, start_new_session=True, env=env)
    child.started = time.monotonic()
    log.info("started %s on %s (pid %d)", child.name, child.addr, child.process.pid)


async def _keep_running(child: Child, stopping: asyncio.Event) -> None:
    while not stopping.is_set():
        assert child.process is not None
        code = await child.process.wait()
        if stopping.is_set():
            return
        # A child that lived a while restarts at once; one that keeps dying waits longer each time.
        if time.monotonic() - child.started > _MAX_PAUSE:
            child.restarts = 0
        pause = min(_MAX_PAUSE, 0.5 * 2**child.restarts)
        child.restarts += 1
        log.warning("%s exited with %d; restarting in %.1f s", child.name, code, pause)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), pause)
        if not stopping.is_set():
            await _start(child)


async def _stop_all(children: list[Child]) -> None:
    running = [c.process for c in children if c.process is not None and c.process.returncode is None]
    for process in running:
        process.send_signal(signal.SIGTERM)
    for process in running:
        try:
            await asyncio.wait_for(process.wait(), 60)
        except TimeoutError:
            process.kill()
            await process.wait()


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
