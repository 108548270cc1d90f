"""Memory figures for Status: process RSS, and GPU memory per device where NVML or torch can tell."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import psutil

log = logging.getLogger(__name__)


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
