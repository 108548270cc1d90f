"""The context a model loads with: ContextSize, cut to what the model was trained on unless RoPE scaling
stretches it (a KV cache for 512000 tokens took 9 GiB for a 270M model trained on 32768)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from localfleet.errors import EngineFailure
from localfleet.testing import serving
from localfleet_llama_cpp.context import MAX_STRETCH, context_for, shape, trained_context
from localfleet_llama_cpp.servicer import LlamaCpp
from tests.llama_cpp.conftest import load_request


def test_a_context_within_the_trained_length_is_kept() -> None:
    assert context_for(4096, 32768, 0.0).tokens == 4096
    assert context_for(4096, 32768, 0.0).note == ""


def test_a_context_past_the_trained_length_is_cut_to_it_and_says_so() -> None:
    context = context_for(512000, 32768, 0.0)
    assert context.tokens == 32768
    assert "ContextSize 512000 is past the 32768 tokens" in context.note
    assert "RopeFreqScale" in context.note


def test_rope_scaling_stretches_the_context_within_a_bound() -> None:
    assert context_for(65536, 32768, 0.5).tokens == 65536
    assert context_for(10**6, 32768, 1e-9).tokens == int(32768 * MAX_STRETCH)
    assert context_for(10**6, 32768, float("nan")).tokens == 32768


def test_a_model_that_names_no_trained_length_keeps_what_was_asked() -> None:
    assert context_for(8192, 0, 0.0).tokens == 8192


def gguf(path: Path, entries: list[tuple[str, int, bytes]]) -> Path:
    def string(text: str) -> bytes:
        return struct.pack("<Q", len(text)) + text.encode()

    body = b"".join(string(key) + struct.pack("<I", kind) + value for key, kind, value in entries)
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, len(entries)) + body)
    return path


def test_the_trained_length_is_read_from_the_header_past_other_values(tmp_path: Path) -> None:
    tokens = struct.pack("<IQ", 8, 2) + struct.pack("<Q", 1) + b"a" + struct.pack("<Q", 2) + b"bc"
    path = gguf(
        tmp_path / "m.gguf",
        [
            ("general.architecture", 8, struct.pack("<Q", 5) + b"llama"),
            ("tokenizer.ggml.tokens", 9, tokens),  # an array of strings
            ("llama.rope.dimension_count", 4, struct.pack("<I", 64)),
            ("llama.context_length", 4, struct.pack("<I", 2048)),
        ],
    )
    assert trained_context(str(path)) == 2048
    assert trained_context(str(gguf(tmp_path / "none.gguf", []))) == 0


def test_a_cut_header_is_an_engine_failure(tmp_path: Path) -> None:
    path = tmp_path / "cut.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<I", 3))
    with pytest.raises(EngineFailure, match="ends inside its metadata"):
        trained_context(str(path))


def test_gemma_reads_as_trained_on_32768_with_a_kv_cache_sized_from_its_shape(gemma: Path) -> None:
    assert trained_context(str(gemma)) == 32768
    # 18 layers x 1 KV head x (256 + 256) x 2 bytes a token: what a load beside the serving model counts
    assert shape(str(gemma)).kv_bytes(32768) == 32768 * 18 * 512 * 2


@pytest.mark.asyncio
async def test_a_huge_context_size_loads_the_trained_one_and_the_load_says_so(gemma: Path) -> None:
    async with serving(LlamaCpp()) as served:
        result = await served.client.backend.LoadModel(load_request(gemma, ContextSize=512000))
        assert result.success, result.message
        assert "context 32768" in result.message
        assert "ContextSize 512000 is past the 32768 tokens" in result.message
