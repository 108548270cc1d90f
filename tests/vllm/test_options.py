"""LoadModel's fields and options as vLLM engine arguments (no engine is started here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from localfleet.backend import ModelRef
from localfleet.errors import BadInput
from localfleet.options import parse_options
from localfleet.proto import backend_pb2 as pb
from localfleet_vllm.servicer import VllmOptions, load_spec

MODEL: list[str] = []  # the tiny Llama's folder (vLLM reads the model's config as it takes its arguments)


@pytest.fixture(autouse=True)
def model(tiny_llama: Path) -> None:
    MODEL[:] = [str(tiny_llama)]


def engine_args(options: list[str] | None = None, **fields: Any) -> Any:
    from localfleet_vllm.engine import engine_args

    parsed = parse_options(VllmOptions, options or [])
    ref = ModelRef(MODEL[0], MODEL[0], "")
    return engine_args(load_spec(ref, parsed, pb.ModelOptions(Model=MODEL[0], **fields)))


def test_model_options_become_engine_arguments() -> None:
    args = engine_args(
        ["max_num_seqs:8", "kv_cache_bytes:1048576"],
        MaxModelLen=1024,
        ContextSize=4096,
        GPUMemoryUtilization=0.5,
        TensorParallelSize=2,
        Quantization="awq",
        EnforceEager=True,
        DType="float16",
        TrustRemoteCode=True,
        LimitImagePerPrompt=2,
        LimitAudioPerPrompt=1,
        Seed=5,
    )
    assert args.model == MODEL[0]
    assert args.max_model_len == 1024  # MaxModelLen wins over ContextSize
    assert args.gpu_memory_utilization == 0.5
    assert args.tensor_parallel_size == 2
    assert args.distributed_executor_backend is None  # vLLM's choice for several devices
    assert args.quantization == "awq"
    assert args.enforce_eager is True
    assert args.dtype == "float16"
    assert args.trust_remote_code is True
    assert args.limit_mm_per_prompt == {"image": 2, "audio": 1}
    assert args.seed == 5
    assert args.max_num_seqs == 8
    assert args.kv_cache_memory_bytes == 1048576


def test_context_size_stands_in_for_max_model_len_and_one_device_runs_in_one_process() -> None:
    args = engine_args(ContextSize=2048)
    assert args.max_model_len == 2048
    assert args.distributed_executor_backend == "uni"
    assert args.runner == "auto"
    assert args.enable_lora is False


def test_embeddings_load_a_pooling_model() -> None:
    args = engine_args(Embeddings=True)
    assert (args.runner, args.convert) == ("pooling", "embed")


def test_engine_args_are_applied_last() -> None:
    args = engine_args(MaxModelLen=1024, EngineArgs='{"max_model_len": 512, "block_size": 32}')
    assert args.max_model_len == 512
    assert args.block_size == 32


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"EngineArgs": '{"nope": 1}'}, "nope"),
        ({"EngineArgs": '{"model": "other"}'}, "model"),
        ({"EngineArgs": "not json"}, "EngineArgs"),
        ({"MaxModelLen": -1}, "MaxModelLen"),
        ({"GPUMemoryUtilization": 2.0}, "GPUMemoryUtilization"),
        ({"LoraAdapter": "/no/such/adapter"}, "/no/such/adapter"),
        ({"LoraAdapters": ["/a", "/b"]}, "LoRA"),
    ],
)
def test_a_field_vllm_cannot_take_is_bad_input_naming_it(fields: dict[str, Any], named: str) -> None:
    with pytest.raises(BadInput) as err:
        engine_args(**fields)
    assert named in str(err.value)


def test_a_model_that_is_not_here_is_bad_input_naming_it() -> None:
    from localfleet_vllm.engine import engine_args as build

    spec = load_spec(ModelRef("org/absent", "org/absent", ""), VllmOptions(), pb.ModelOptions())
    with pytest.raises(BadInput) as err:
        build(spec)
    assert "org/absent" in str(err.value)


def test_an_unknown_option_is_bad_input() -> None:
    with pytest.raises(BadInput) as err:
        engine_args(["no_such:1"])
    assert "no_such" in str(err.value)
