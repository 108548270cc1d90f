"""`localfleet up [BACKEND...]`: a local fleet, one child process per backend, for LocalAI core to use.

Prints the `LOCALAI_EXTERNAL_GRPC_BACKENDS=...` line, restarts a backend that crashes (with a growing
pause, so a backend that cannot start does not spin), and on Ctrl-C or SIGTERM drains them all.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
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
    parser.add_argument("--host", default="127.0.0.1", help="address the backends listen on")
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="BACKEND=MODEL",
        help="a start-up model for one backend, e.g. local-store=store://default",
    )
    parser.add_argument("--start-timeout", type=float, default=120.0, help="seconds to wait for Health OK")
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
    models = dict(m.split("=", 1) for m in args.model if "=" in m)
    children = []
    for name, location in where.items():
        if location is None:
            continue
        addr = f"{args.host}:{_free_port(args.host)}"
        argv = [*location.argv, "--addr", addr]
        if name in models:
            argv += ["--model", models[name]]
        log.info("%s from %s", name, location.where)
        children.append(Child(name, addr, argv))
    if not children:
        log.error("no backend is installed; `localfleet install NAME` builds one (`localfleet list`)")
        return 2
    return asyncio.run(_fleet(children, args.start_timeout))


async def _fleet(children: list[Child], start_timeout: float) -> int:
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
        await asyncio.gather(*(wait_loaded(c.addr, start_timeout) for c in loading))
    except (TimeoutError, RuntimeError) as exc:
        log.error("%s", exc)
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
    child.process = await asyncio.create_subprocess_exec(*child.argv, start_new_session=True)
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
