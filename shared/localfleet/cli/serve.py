"""`localfleet serve BACKEND --addr HOST:PORT`: one backend process (what run.sh and images start)."""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from localfleet.backend import Backend

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


def add_arguments(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> None:
    """`argv`, the command line after `serve`: with a backend named, --help shows its LoadModel options."""
    parser.add_argument("backend", help="backend name, see `localfleet list`")
    if argv and not argv[0].startswith("-") and ("-h" in argv or "--help" in argv):
        parser.epilog = backend_help(argv[0])
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
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
        for line in setting_errors(exc):
            print(f"localfleet serve: {line}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format, args.backend)
    log = logging.getLogger("localfleet")
    try:
        backend_cls = _backend_class(args.backend)
    except (LookupError, ImportError, TypeError) as exc:
        log.error("cannot start %s: %s", args.backend, exc)
        return 2
    from localfleet.server import run as serve

    coro = serve(backend_cls(), settings)
    try:
        import uvloop
    except ImportError:  # uvloop is optional (not on Windows): the stock loop serves the same
        runner: Any = asyncio.run
    else:
        runner = uvloop.run
    try:
        return int(runner(coro))
    except OSError as exc:
        if exc.errno not in _BIND_ERRORS:
            raise
        log.error("cannot listen on %s: %s (choose another --addr)", settings.addr, exc.strerror)
        return 2


#: what binding a listening socket fails with when the address is the problem
_BIND_ERRORS = {errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES}


def backend_help(name: str) -> str:
    """What `serve NAME --help` adds: the backend's own text and its LoadModel options (`--option`)."""
    try:
        cls = _backend_class(name)
    except (LookupError, ImportError, TypeError) as exc:
        return f"{name}: {exc}"
    about = (cls.__doc__ or "").strip().split("\n\n")[0]
    lines = [
        f"{name}: {' '.join(about.split())}" if about else name,
        "",
        "LoadModel options (--option KEY:VALUE):",
    ]
    for key, field in cls.Options.model_fields.items():
        kind = getattr(field.annotation, "__name__", None) or str(field.annotation).replace("typing.", "")
        default = (
            "required" if field.is_required() else f"default {field.get_default(call_default_factory=True)!r}"
        )
        text = f"  {key} ({kind}, {default})"
        lines.append(f"{text}: {field.description}" if field.description else text)
    if not cls.Options.model_fields:
        lines.append("  none")
    return "\n".join(lines)


def setting_errors(exc: Any) -> list[str]:
    """A pydantic ValidationError of Settings as one line a setting: its flag, its variable, the fix."""
    from localfleet.inputs import excerpt

    lines = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else "settings"
        where = f"--{field.replace('_', '-')} (env LOCALFLEET_{field.upper()})"
        message = str(error["msg"]).removeprefix("Value error, ")
        lines.append(f"bad setting {where}: {message}; got {excerpt(str(error.get('input')))}")
    return lines


def _backend_class(name: str) -> type[Backend]:
    """The backend's class, or an error that says where it is installed, or how to install it."""
    from localfleet import catalog, environments

    try:
        entry = catalog.find(name)
    except LookupError as exc:
        location = environments.locate(name, environments.backends_dir_from_env())
        if location is not None:
            raise LookupError(
                f"it is not in this environment but in {location.where}: start that one "
                f"({' '.join(location.argv)} --addr HOST:PORT), or `localfleet up {name}`"
            ) from None
        _, hint = environments.describe(name, environments.backends_dir_from_env())
        raise LookupError(f"{exc}{'; install it: ' + hint if hint else ''}") from None
    if missing := entry.missing():
        _, hint = environments.describe(name, None)
        raise LookupError(
            f"its engine is not installed in this environment (missing: {', '.join(missing)}); "
            f"install the backend with its dependencies: {hint or f'pip install localfleet-{name}'}"
        )
    return entry.load()
