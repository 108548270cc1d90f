from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from localfleet.proto import backend_pb2 as pb
from localfleet.testing import Served, serving
from tests.runtime.workbench import Workbench

Backendish = Any


@pytest.fixture
def workbench() -> Workbench:
    return Workbench()


@pytest.fixture
async def served(workbench: Workbench) -> AsyncIterator[Served]:
    async with serving(workbench) as s:
        yield s


async def load(served: Served, model: str = "bench-model", **fields: Any) -> pb.Result:
    result: pb.Result = await served.client.backend.LoadModel(pb.ModelOptions(Model=model, **fields))
    return result


@pytest.fixture
async def loaded(served: Served) -> Served:
    result = await load(served)
    assert result.success, result.message
    return served
