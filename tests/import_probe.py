"""Which heavy modules a backend's process holds once it listens, before any LoadModel (a child process)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

_PROBE = """
import asyncio, sys
from localfleet import catalog
from localfleet.server import BackendServer
from localfleet.settings import Settings

async def main():
    app = BackendServer(catalog.find({backend!r}).load()(), Settings(addr="127.0.0.1:0"))
    await app.start()
    heavy = sorted(m for m in {modules!r} if m in sys.modules)
    app.stop(0)
    await app.wait_stopped()
    print(",".join(heavy) or "none")

asyncio.run(main())
"""


def imported_before_load(backend: str, modules: tuple[str, ...]) -> str:
    """The string "none", or the comma-joined names of `modules` imported by the time the port is open."""
    probe = textwrap.dedent(_PROBE).format(backend=backend, modules=modules)
    command = [sys.executable, "-c", probe]
    out = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()
