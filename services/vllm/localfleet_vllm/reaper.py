"""A watcher that ends vLLM's engine processes when this process dies, however it dies.

vLLM's engine core runs in a process of its own (and its worker in another), which does not notice its
parent going away: a backend killed with SIGKILL (core restarting it, the OOM killer) would leave them
running, holding the model's memory (a GPU's, on a GPU). The watcher is a small Python process that
holds the read end of a pipe whose only write end is this process's: when this process dies, the pipe
reads end-of-file, and the watcher sends SIGTERM, then SIGKILL, to the processes it was given.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys

import psutil

_WATCH = """
import os, signal, sys, time


def running(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except OSError:
        return False


sys.stdin.buffer.read()  # returns at end-of-file: the backend closed the pipe, or died
pids = [int(p) for p in sys.argv[1:]]
for sig in (signal.SIGTERM, signal.SIGKILL):
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(running(p) for p in pids):
        time.sleep(0.05)
"""


class Reaper:
    """Watches the engine processes started since `before` (this process's children then)."""

    def __init__(self, before: set[int]) -> None:
        children = psutil.Process().children(recursive=True)
        self.pids = sorted(p.pid for p in children if p.pid not in before and _engine(p))
        self._watcher: subprocess.Popen[bytes] | None = None
        if self.pids:
            self._watcher = subprocess.Popen(
                [sys.executable, "-c", _WATCH, *map(str, self.pids)],
                stdin=subprocess.PIPE,
                start_new_session=True,  # a signal to the backend's process group spares it
                close_fds=True,
            )

    @staticmethod
    def children() -> set[int]:
        return {p.pid for p in psutil.Process().children(recursive=True)}

    def release(self) -> None:
        """After vLLM's own shutdown: the watcher ends whatever of the engine is still running, then
        exits (at once when nothing is)."""
        watcher, self._watcher = self._watcher, None
        if watcher is None:
            return
        if watcher.stdin is not None:
            with contextlib.suppress(OSError):
                watcher.stdin.close()
        try:
            watcher.wait(timeout=15)
        except subprocess.TimeoutExpired:
            watcher.kill()
            watcher.wait()


def _engine(process: psutil.Process) -> bool:
    """vLLM's processes, not multiprocessing's resource tracker (shared by whatever this process starts
    later, and ending by itself with it)."""
    try:
        return not any("resource_tracker" in part for part in process.cmdline())
    except psutil.Error:
        return False
