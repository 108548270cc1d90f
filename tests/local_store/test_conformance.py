"""local-store against the store conformance tests (tests/store_conformance.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from localfleet.testing import Served, serving
from localfleet_local_store.servicer import LocalStore
from tests.store_conformance import StoreConformance

pytestmark = pytest.mark.asyncio


class TestLocalStore(StoreConformance):
    @pytest.fixture
    async def served(self) -> AsyncIterator[Served]:
        async with serving(LocalStore()) as served:
            yield served

    @pytest.fixture
    def store_options(self) -> list[str]:
        return []
