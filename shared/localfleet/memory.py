"""Memory figures for Status: process RSS, and GPU memory per device where NVML or torch can tell; and
handing the C heap's free memory back to the system after a large request."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import psutil

log = logging.getLogger(__name__)

#: a request of this many bytes leaves the C heap holding memory worth handing back once it is over
LARGE_REQUEST_BYTES = 4 * 2**20
#: memory left free after a second model is loaded beside the one serving (buffers, a call's work)
BESIDE_HEADROOM = 512 * 2**20
#: files counted when sizing a model folder: past this, the folder is not a model to size
MAX_MODEL_FILES = 10_000
#: seconds with no large request before the trim: its reply gone and its buffers freed, and no traffic
#: that would fault the pages straight back in
TRIM_DELAY = 2.0


def rss() -> int:
    return int(psutil.Process().memory_info().rss)


def process_memory() -> dict[str, int]:
    figures = {"rss": rss()}
    figures.update(_gpu_memory())
    return figures


def _gpu_memory() -> dict[str, int]:
    # NVML sees this process's memory on every device (what `nvidia-smi` shows); torch only sees its own
    # allocator. Neither can be exercised on CPU-only machines: the code path is covered on GPU hosts.
    figures = _nvml_process_memory()
    if figures:
        return figures
    cuda = _torch_cuda()
    if cuda is not None and cuda.is_available() and cuda.is_initialized():
        for device in range(cuda.device_count()):
            figures[f"gpu{device}"] = int(cuda.memory_reserved(device))
    return figures


def gpu_in_use() -> bool:
    """Whether this process holds GPU memory (NVML, or torch's CUDA once initialized)."""
    return any(v > 0 for v in _gpu_memory().values())


def room_beside(path: str, working: int = 0) -> str | None:
    """Why the model at `path` would not fit in memory beside the one loaded now (blocking), or None.

    Weights on disk are what a load brings into memory, near enough, plus `working` bytes it allocates
    (a KV cache): a model that is not a local file or folder (a hub id) has no size here, so it is not
    loaded beside.
    """
    on_disk = disk_bytes(path)
    if on_disk is None:
        return f"the size of {path[:80]!r} is not known here (not a local file or folder)"
    size = on_disk + working
    available = int(psutil.virtual_memory().available)
    if size + BESIDE_HEADROOM > available:
        gib = 2**30
        return (
            f"it ({size / gib:.1f} GiB with its working memory) and the model serving now do not fit in "
            f"memory together ({available / gib:.1f} GiB available)"
        )
    return None


def disk_bytes(path: str) -> int | None:
    """Bytes of a model file, or of the files in a model folder (symbolic links followed, as a load
    does); None when `path` is neither or holds more than MAX_MODEL_FILES files."""
    try:
        if os.path.isfile(path):
            return os.path.getsize(path)
        if not os.path.isdir(path):
            return None
        total = files = 0
        for folder, _, names in os.walk(path):
            for name in names:
                files += 1
                if files > MAX_MODEL_FILES:
                    return None
                full = os.path.join(folder, name)
                total += os.path.getsize(full) if os.path.isfile(full) else 0
        return total
    except OSError:
        return None


def _torch_cuda() -> Any:
    """torch.cuda if torch is already imported, else None: never import torch just to report on it.

    A backend may be importing torch in its load thread right now: a half-imported module has no
    `cuda` yet, and Status must still answer.
    """
    return getattr(sys.modules.get("torch"), "cuda", None)


def _nvml_process_memory() -> dict[str, int]:
    try:
        import pynvml  # type: ignore[import-not-found]  # optional: the `nvidia` extra
    except ImportError:
        return {}
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return {}
    figures: dict[str, int] = {}
    pid = os.getpid()
    try:
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid == pid and proc.usedGpuMemory is not None:
                    figures[f"gpu{index}"] = figures.get(f"gpu{index}", 0) + int(proc.usedGpuMemory)
    except pynvml.NVMLError as exc:
        log.debug("NVML could not report memory: %s", exc)
    finally:
        pynvml.nvmlShutdown()
    return figures


def release_device_caches() -> None:
    """After a model is dropped: hand cached device memory back to the driver, where torch holds some."""
    cuda = _torch_cuda()
    if cuda is not None and cuda.is_available() and cuda.is_initialized():
        cuda.empty_cache()


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, where the C library has one (not musl, macOS or Windows)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError, TypeError):  # TypeError: Windows has no CDLL(None)
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_MALLOC_TRIM = _malloc_trim()
#: the loops with a trim pending, and when each last saw a large request (loop time)
_trim_due: dict[asyncio.AbstractEventLoop, float] = {}


def trim_heap() -> None:
    """Free what cycles hold, then hand the C heap's free pages back to the system.

    glibc keeps freed memory in its arenas (one per thread that allocated) for reuse: after a large
    request that is hundreds of MB resident that nothing uses. malloc_trim(0) returns it, in every arena.
    """
    started, before = time.perf_counter(), rss()
    gc.collect()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
    log.debug(
        "heap trimmed in %.0f ms: RSS %d -> %d MiB",
        (time.perf_counter() - started) * 1e3,
        before // 2**20,
        rss() // 2**20,
    )


def freeze_model() -> None:
    """After a load: collect once, then move every object alive (the engine's library and the model,
    often hundreds of thousands) out of the collector's way. A full collection (trim_heap, after every
    large request) would otherwise walk them all for a quarter of a second, holding the GIL."""
    gc.collect()
    gc.freeze()


def thaw_model() -> None:
    """Before an unload or a load that replaces the model: what the model held may be collected again."""
    gc.unfreeze()


def trim_after_large(size: int) -> None:
    """After a request of `size` bytes: trim the heap in a worker thread once TRIM_DELAY seconds have
    passed with no other large request; one trim pending at a time. Under steady traffic the trim waits:
    it hands pages back that the next request would fault in again (milliseconds on a short TTS)."""
    if size < LARGE_REQUEST_BYTES:
        return
    loop = asyncio.get_running_loop()
    pending = loop in _trim_due
    _trim_due[loop] = loop.time()
    if pending:
        return

    def trim() -> None:
        idle = loop.time() - _trim_due[loop]
        if idle < TRIM_DELAY:
            loop.call_later(TRIM_DELAY - idle, trim)
            return
        del _trim_due[loop]
        loop.run_in_executor(None, trim_heap)

    loop.call_later(TRIM_DELAY, trim)
