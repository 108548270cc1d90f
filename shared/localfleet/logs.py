"""Logging, configured before any heavy import so engine libraries log through it from the start."""

from __future__ import annotations

import json
import logging
import sys
import time


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


#: libraries that give their loggers a handler of their own (and some stop propagation): each line
#: would show twice, or once in the library's format, never as a JSON line
_SELF_HANDLED = ("transformers", "huggingface_hub", "diffusers")


class _Adopted(logging.Logger):
    """A library's root logger that keeps no handler of its own: its records go to the process's."""

    def addHandler(self, hdlr: logging.Handler) -> None:
        pass

    @property
    def propagate(self) -> bool:
        return True

    @propagate.setter
    def propagate(self, value: bool) -> None:
        pass


def _adopt(name: str) -> None:
    if isinstance(logging.Logger.manager.loggerDict.get(name), logging.Logger):
        return  # already made (imported before configure): leave it as the library set it
    previous = logging.getLoggerClass()
    logging.setLoggerClass(_Adopted)
    try:
        logging.getLogger(name)
    finally:
        logging.setLoggerClass(previous)


def configure(level: str = "INFO", fmt: str = "text", backend: str = "") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        prefix = f"[{backend}] " if backend else ""
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # grpclib logs every cancelled request at INFO: routine for a server whose clients hang up.
    logging.getLogger("grpclib").setLevel(max(logging.WARNING, root.level))
    for name in _SELF_HANDLED:
        _adopt(name)
