"""Exactness: a tiny random Llama through the backend against transformers on the same weights.

Tokenization is compared with SentencePiece, the tokenizer the GGUF's vocabulary comes from (transformers
5 converts it to a `tokenizers` pipeline that drops a lone dummy-prefix piece on this vocabulary, so it is
not a reference for llama.cpp's SPM tokenizer); greedy output and logprobs with transformers' model.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from localfleet.proto import backend_pb2 as pb
from localfleet.testing import Served, serving
from localfleet_llama_cpp.servicer import LlamaCpp
from tests.llama_cpp.conftest import load_request
from tests.llama_cpp.tiny_llama import TinyLlama, build, write_lora

pytestmark = pytest.mark.asyncio

TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "Héllo wörld, café déjà vu. 東京 123 456",
    "  double  spaces\tand a tab",
    "unseen words: zebra quixotic ✓",
]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyLlama:
    for module in ("llama_cpp", "torch", "transformers", "sentencepiece", "gguf"):
        pytest.importorskip(
            module, reason=f"{module} is not installed (pip install -e '.[llama-cpp-parity]')"
        )
    return build(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
async def served(tiny: TinyLlama) -> AsyncIterator[Served]:
    async with serving(LlamaCpp()) as fleet:
        # An f32 KV cache: the only rounding left is float32 arithmetic order.
        request = load_request(tiny.gguf, ContextSize=256, CacheTypeKey="f32", CacheTypeValue="f32")
        result = await fleet.client.backend.LoadModel(request)
        assert result.success, result.message
        yield fleet


@pytest.mark.parametrize("text", TEXTS)
async def test_tokenization_matches_sentencepiece(served: Served, tiny: TinyLlama, text: str) -> None:
    tokens = await served.client.backend.TokenizeString(pb.PredictOptions(Prompt=text))
    assert list(tokens.tokens) == tiny.tokenizer.encode(text)
    back = await served.client.backend.Detokenize(pb.DetokenizeRequest(tokens=tokens.tokens))
    assert back.content == tiny.tokenizer.decode(list(tokens.tokens))


@pytest.mark.parametrize("text", [TEXTS[0], TEXTS[1]])
async def test_greedy_output_and_logprobs_match_transformers(
    served: Served, tiny: TinyLlama, text: str
) -> None:
    import torch

    prompt = [1, *tiny.tokenizer.encode(text)]
    steps = 24
    with torch.no_grad():
        generated = tiny.model.generate(
            torch.tensor([prompt]), max_new_tokens=steps, do_sample=False, min_new_tokens=steps
        )[0].tolist()
        logits = tiny.model(torch.tensor([generated])).logits[0]
        logprobs = torch.log_softmax(logits.double(), dim=-1)
    expected = generated[len(prompt) :]

    request = pb.PredictOptions(
        Prompt=text, Tokens=steps, Temperature=0, Logprobs=1, TopLogprobs=3, IgnoreEOS=True
    )
    reply = await served.client.backend.Predict(request)
    assert reply.prompt_tokens == len(prompt)
    content = json.loads(reply.logprobs)["content"]
    assert [entry["id"] for entry in content] == expected
    for i, entry in enumerate(content):
        reference = logprobs[len(prompt) - 1 + i]
        assert entry["logprob"] == pytest.approx(float(reference[entry["id"]]), abs=1e-4)
        top = [t["id"] for t in entry["top_logprobs"]]
        assert top == torch.topk(reference, 3).indices.tolist()
    assert reply.message == b"".join(bytes(entry["bytes"]) for entry in content)


async def test_the_stream_gives_the_same_tokens(served: Served, tiny: TinyLlama) -> None:
    request = pb.PredictOptions(Prompt=TEXTS[0], Tokens=16, Temperature=0, IgnoreEOS=True, Logprobs=1)
    whole = await served.client.backend.Predict(request)
    async with served.client.backend.PredictStream.open() as call:
        await call.send_message(request, end=True)
        chunks = [reply async for reply in call]
    assert b"".join(c.message for c in chunks) == whole.message
    assert json.loads(chunks[-1].logprobs) == json.loads(whole.logprobs)


async def test_the_gguf_is_small(tiny: TinyLlama) -> None:
    assert isinstance(tiny.gguf, Path)
    assert tiny.gguf.stat().st_size < 1_000_000


def merged(tiny: TinyLlama, *adapters: tuple[dict[str, Any], float]) -> Any:
    """The transformers model with LoRA deltas merged in, each at its scale."""
    import copy

    import torch

    model = copy.deepcopy(tiny.model)
    state = model.state_dict()
    with torch.no_grad():
        for deltas, scale in adapters:
            for name, delta in deltas.items():
                state[name] += scale * torch.from_numpy(delta)
    return model


async def test_lora_adapters_apply_at_their_scales(tiny: TinyLlama, tmp_path: Path) -> None:
    import torch

    first = write_lora(tmp_path / "first-lora.gguf", tiny.model, rank=4, alpha=8.0, seed=1)
    second = write_lora(tmp_path / "second-lora.gguf", tiny.model, rank=2, alpha=0.0, seed=2)
    prompt = [1, *tiny.tokenizer.encode(TEXTS[0])]
    request = pb.PredictOptions(Prompt=TEXTS[0], Tokens=12, Temperature=0, Logprobs=1, IgnoreEOS=True)
    cases = [
        ({"LoraAdapter": str(tmp_path / "first-lora.gguf"), "LoraScale": 0.5}, [(first, 0.5)]),
        ({"LoraAdapters": ["first-lora.gguf", "second-lora.gguf"], "LoraScales": [1.0, 0.25]},
         [(first, 1.0), (second, 0.25)]),
    ]  # fmt: skip
    base: list[int] = []
    for fields, adapters in cases:
        reference = merged(tiny, *adapters)
        with torch.no_grad():
            generated = reference.generate(
                torch.tensor([prompt]), max_new_tokens=12, min_new_tokens=12, do_sample=False
            )[0].tolist()
            logprobs = torch.log_softmax(reference(torch.tensor([generated])).logits[0].double(), dim=-1)
        async with serving(LlamaCpp()) as fleet:
            # ModelPath is the adapters' folder too: relative adapter names resolve there.
            load = load_request(tiny.gguf, ContextSize=256, CacheTypeKey="f32", CacheTypeValue="f32")
            load.ModelPath = str(tmp_path)
            for name, value in fields.items():
                if isinstance(value, list):
                    getattr(load, name).extend(value)
                else:
                    setattr(load, name, value)
            result = await fleet.client.backend.LoadModel(load)
            assert result.success, result.message
            assert f"{len(adapters)} LoRA adapter(s)" in result.message
            reply = await fleet.client.backend.Predict(request)
        content = json.loads(reply.logprobs)["content"]
        assert [e["id"] for e in content] == generated[len(prompt) :]
        for i, entry in enumerate(content):
            expected = float(logprobs[len(prompt) - 1 + i][entry["id"]])
            assert entry["logprob"] == pytest.approx(expected, abs=1e-3)
        base = base or [int(t) for t in tiny.model.generate(
            torch.tensor([prompt]), max_new_tokens=12, min_new_tokens=12, do_sample=False
        )[0].tolist()]  # fmt: skip
        assert generated != base  # the adapter changed what the model says
