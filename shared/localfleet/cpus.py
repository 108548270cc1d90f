"""The CPUs this process may use, and engine thread counts capped at them."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def usable() -> int:
    """CPUs this process may run on (its affinity: a container's cpuset, taskset), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(len(os.sched_getaffinity(0)), 1)
    return os.cpu_count() or 1


def cap_threads(requested: int) -> int:
    """`requested` threads, at most the usable CPUs; 0 (or less) stays 0, the engine's own default.

    Threads past the cores only make an engine's workers contend with each other.
    """
    if requested <= 0:
        return 0
    available = usable()
    if requested > available:
        log.info("Threads %d capped at the %d CPUs available to this process", requested, available)
    return min(requested, available)
