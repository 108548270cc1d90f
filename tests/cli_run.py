"""`localfleet call ADDR ...` as a person runs it: the real CLI in a child process (every backend's tests)."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Ran:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


async def cli(addr: str, *args: str, token: str = "", cwd: Path | None = None) -> Ran:
    """`localfleet call ADDR ARGS...` in a child process, with $LOCALAI_GRPC_AUTH_TOKEN set to `token`."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "localfleet",
        "call",
        addr,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "LOCALAI_GRPC_AUTH_TOKEN": token},
        cwd=cwd,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return Ran(proc.returncode, out.decode(), err.decode())


def failed(ran: Ran, *needles: str) -> None:
    """One readable line on stderr, nothing on stdout, exit status 1."""
    assert ran.code == 1, ran
    assert ran.out == "", ran
    [line] = ran.err.splitlines()
    assert line.startswith("error: "), line
    for needle in needles:
        assert needle in line, line
