"""`localfleet call ADDR embed|tokenize|predict` against the transformers backend (tests/cli_run.py)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from localfleet.proto import backend_pb2 as pb
from localfleet.testing import Served
from tests.cli_run import cli, failed
from tests.transformers.conftest import minilm, tiny_llama
from tests.transformers.test_embedding import BABY, BREAD, FOOD, embedder
from tests.transformers.test_generation import CHAT, PROMPT, llm

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]

__all__ = ["embedder", "llm", "minilm", "tiny_llama"]  # the backend's own fixtures, served here as there


def cosine(a: list[float], b: list[float]) -> float:
    x, y = np.asarray(a), np.asarray(b)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


async def test_embed_prints_a_json_vector_a_text_with_minilms_similarities(embedder: Served) -> None:
    ran = await cli(embedder.addr, "embed", FOOD, BREAD, BABY)
    assert ran.code == 0, ran.err
    food, bread, baby = [json.loads(line) for line in ran.lines]
    assert len(food) == len(bread) == len(baby) == 384
    assert cosine(food, bread) == pytest.approx(0.7553, abs=0.001)  # as tests/transformers asserts
    assert cosine(food, baby) == pytest.approx(-0.1050, abs=0.001)
    # One text alone each way: three at once may share a padded batch, which moves the last bits.
    alone = json.loads((await cli(embedder.addr, "embed", FOOD)).lines[0])
    direct = await embedder.client.backend.Embedding(pb.PredictOptions(Embeddings=FOOD))
    assert np.asarray(alone, np.float32).tolist() == list(direct.embeddings)  # float32 round-trips exactly
    dims = await cli(embedder.addr, "embed", FOOD, BABY, "--dims")
    assert dims.lines == ["384", "384"]


async def test_tokenize_prints_the_models_own_token_ids(llm: Served, tiny_llama: Path) -> None:
    from transformers import AutoTokenizer

    ran = await cli(llm.addr, "tokenize", PROMPT)
    assert ran.code == 0, ran.err
    expected = AutoTokenizer.from_pretrained(tiny_llama, local_files_only=True)(PROMPT)["input_ids"]
    assert json.loads(ran.out) == expected
    assert len(expected) > 3


async def test_predict_prints_the_generated_text_and_passes_the_sampling_flags(llm: Served) -> None:
    async def direct(**fields: Any) -> str:
        reply = await llm.client.backend.Predict(pb.PredictOptions(**fields))
        return str(reply.message.decode(errors="replace"))

    greedy = await cli(llm.addr, "predict", PROMPT, "--tokens", "16")
    assert greedy.code == 0, greedy.err
    assert greedy.out == await direct(Prompt=PROMPT, Tokens=16) + "\n"
    assert greedy.out.strip()

    sampled = ("--tokens", "30", "--temperature", "1.0", "--seed", "5")
    whole, streamed = await asyncio.gather(
        cli(llm.addr, "predict", PROMPT, *sampled), cli(llm.addr, "predict", PROMPT, *sampled, "--stream")
    )
    expected = await direct(Prompt=PROMPT, Tokens=30, Temperature=1.0, Seed=5)
    assert whole.out == streamed.out == expected + "\n"
    assert expected != await direct(Prompt=PROMPT, Tokens=30, Temperature=1.0, Seed=6)

    messages = [f"--message={m.role}:{m.content}" for m in CHAT]
    chat = await cli(llm.addr, "predict", *messages, "--tokens", "12", "--stream")
    assert chat.code == 0, chat.err
    assert chat.out == await direct(UseTokenizerTemplate=True, Messages=CHAT, Tokens=12) + "\n"
    assert chat.out != greedy.out


async def test_errors_are_one_line_and_exit_1(embedder: Served) -> None:
    runs = await asyncio.gather(
        cli(embedder.addr, "predict", "hello"),
        cli(embedder.addr, "embed", ""),
    )
    cannot_generate, empty = runs
    failed(cannot_generate, "INVALID_ARGUMENT", "cannot generate")
    failed(empty, "INVALID_ARGUMENT", "Embeddings")
