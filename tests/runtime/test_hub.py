"""A hub id that cannot come from anywhere here is refused at once, not after minutes of retries."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from localfleet import hub


@pytest.fixture
def dead_endpoint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on: connection refused at once
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "_memo", {})


@pytest.mark.usefixtures("dead_endpoint")
def test_an_unreachable_hub_refuses_an_uncached_id_fast() -> None:
    started = time.monotonic()
    reason = hub.refusal("org/no-such-model")
    assert reason is not None
    assert "the hub cannot be reached" in reason
    assert time.monotonic() - started < 5


@pytest.mark.usefixtures("dead_endpoint")
def test_a_cached_id_a_local_folder_or_a_path_is_left_to_the_backend(tmp_path: Path) -> None:
    (tmp_path / "hub" / "models--org--cached" / "snapshots" / "abc").mkdir(parents=True)
    assert hub.refusal("org/cached") is None
    assert hub.refusal(str(tmp_path)) is None  # a folder that exists
    assert hub.refusal("/models/not/a/hub/id") is None  # not a hub id: the backend's own checks


def test_offline_mode_refuses_without_probing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hub, "reachable", lambda endpoint=None: pytest.fail("probed the hub"))
    reason = hub.refusal("org/model")
    assert reason is not None
    assert "HF_HUB_OFFLINE is set" in reason
