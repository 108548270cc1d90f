"""`localfleet serve BACKEND --addr HOST:PORT`: one backend process (what run.sh and images start)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

_FLAGS: dict[str, dict[str, Any]] = {
    "--addr": {"help": "HOST:PORT to listen on (env LOCALFLEET_ADDR)"},
    "--model": {"help": "model to load at start-up (env LOCALFLEET_MODEL)"},
    "--model-path": {"help": "models directory for --model (env LOCALFLEET_MODEL_PATH)"},
    "--option": {
        "action": "append",
        "dest": "model_options",
        "metavar": "KEY:VALUE",
        "help": "start-up model option, repeatable",
    },
    "--concurrency": {"type": int, "help": "requests run at once (env LOCALFLEET_CONCURRENCY)"},
    "--queue-size": {"type": int, "help": "requests that may wait (env LOCALFLEET_QUEUE_SIZE)"},
    "--grace-period": {"type": float, "help": "drain seconds on SIGTERM (env LOCALFLEET_GRACE_PERIOD)"},
    "--metrics-addr": {"help": "HOST:PORT for Prometheus metrics (env LOCALFLEET_METRICS_ADDR)"},
    "--log-level": {"help": "DEBUG, INFO, WARNING, ERROR (env LOCALFLEET_LOG_LEVEL)"},
    "--log-format": {"choices": ["text", "json"], "help": "env LOCALFLEET_LOG_FORMAT"},
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("backend", help="backend name, see `localfleet list`")
    for flag, spec in _FLAGS.items():
        parser.add_argument(flag, **spec)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from localfleet import logs
    from localfleet.settings import Settings

    flags = {k: v for k, v in vars(args).items() if k not in {"backend", "run", "command"} and v is not None}
    try:
        settings = Settings(**flags)
    except ValidationError as exc:
        print(f"localfleet serve: bad setting: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format, args.backend)
    log = logging.getLogger("localfleet")

    from localfleet import catalog

    try:
        backend_cls = catalog.find(args.backend).load()
    except (LookupError, ImportError, TypeError) as exc:
        log.error("cannot start %s: %s", args.backend, exc)
        return 2
    from localfleet.server import run as serve

    coro = serve(backend_cls(), settings)
    try:
        import uvloop
    except ImportError:  # uvloop is optional (not on Windows): the stock loop serves the same
        return asyncio.run(coro)
    return uvloop.run(coro)
