"""milvus-store against the store conformance tests (tests/store_conformance.py): a Milvus server
process reached by URI, as a cluster would be, and the embedded default (no address)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from localfleet.testing import Served, serving
from localfleet_milvus_store.servicer import MilvusStore
from tests.milvus_store.conftest import Engine
from tests.store_conformance import StoreConformance

pytestmark = pytest.mark.asyncio


class TestMilvusServer(StoreConformance):
    @pytest.fixture
    async def served(self) -> AsyncIterator[Served]:
        async with serving(MilvusStore()) as served:
            yield served

    @pytest.fixture
    def store_options(self, engine: Engine) -> list[str]:
        return [f"uri:{engine.uri}"]


class TestMilvusEmbedded(StoreConformance):
    @pytest.fixture
    async def served(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Served]:
        monkeypatch.setenv("LOCALFLEET_MILVUS_DIR", str(tmp_path))
        monkeypatch.delenv("LOCALFLEET_MILVUS_URI", raising=False)
        async with serving(MilvusStore()) as served:
            yield served

    @pytest.fixture
    def store_options(self) -> list[str]:
        return []
