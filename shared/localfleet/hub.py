"""Whether a model name that is not a local path can come from the Hugging Face hub here.

Backends that accept hub ids (transformers, rerankers) would otherwise let the hub client retry for
tens of seconds on a machine with no network before failing, and a LoadModel that fails that way has
already cost the model that was serving. Asked in `Backend.refuse`: fast, no download.
"""

from __future__ import annotations

import os
import re
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

#: a hub id: "name" or "org/name", the characters the hub allows
_HUB_ID = re.compile(r"^(?:[\w.-]+/)?[\w.-]+$")
#: how long one answer about the hub's reachability is trusted
_REMEMBER = 60.0
_PROBE_TIMEOUT = 3.0

_lock = threading.Lock()
_memo: dict[str, tuple[float, bool]] = {}  # endpoint -> (when asked, reachable)


def cache_dir() -> Path:
    if hub := os.environ.get("HF_HUB_CACHE"):
        return Path(hub)
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(home) / "hub"


def cached(model_id: str) -> bool:
    """The hub cache holds a snapshot of `model_id` (downloaded earlier, usable offline)."""
    folder = cache_dir() / f"models--{model_id.replace('/', '--')}" / "snapshots"
    return folder.is_dir() and any(folder.iterdir())


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}


def reachable(endpoint: str | None = None) -> bool:
    """The hub answers HTTP within a few seconds; remembered for a minute."""
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    with _lock:
        asked = _memo.get(endpoint)
        if asked is not None and time.monotonic() - asked[0] < _REMEMBER:
            return asked[1]
    try:
        with urllib.request.urlopen(endpoint, timeout=_PROBE_TIMEOUT):
            answer = True
    except urllib.error.HTTPError:
        answer = True  # it answered, with an error status: the network is there
    except (OSError, ValueError):
        answer = False
    with _lock:
        _memo[endpoint] = (time.monotonic(), answer)
    return answer


def refusal(name: str) -> str | None:
    """Why `name` (neither a local path nor a bundled model) cannot be loaded from the hub, or None."""
    if not _HUB_ID.match(name) or Path(name).exists() or cached(name):
        return None
    if offline():
        return (
            f"{name!r} is not a local folder and not in the Hugging Face cache ({cache_dir()}), and "
            "HF_HUB_OFFLINE is set: download it first, or pass the path of its folder"
        )
    if not reachable():
        return (
            f"{name!r} is not a local folder, not in the Hugging Face cache ({cache_dir()}), and the "
            "hub cannot be reached from this machine: download it where the backend can read it and "
            "pass that folder's path"
        )
    return None
