"""transformers generation over real gRPC on a tiny random Llama built in the test session.

Expected outputs are never written down: they come from the same weights run by transformers in-process.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from localfleet.client import connect
from localfleet.proto import backend_pb2 as pb
from localfleet.testing import Served, serving
from localfleet_transformers.servicer import Transformers

pytestmark = pytest.mark.asyncio(loop_scope="module")

PROMPT = "Hello, how are you today?"
CHAT = [
    pb.Message(role="system", content="Answer briefly."),
    pb.Message(role="user", content="What is the weather?"),
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def llm(tiny_llama: Path) -> AsyncIterator[Served]:
    async with serving(Transformers()) as served:
        result = await served.client.backend.LoadModel(pb.ModelOptions(Model=str(tiny_llama)))
        assert result.success, result.message
        assert result.message.startswith("causal-lm")
        yield served


@pytest.fixture(scope="module")
def bare(tiny_llama: Path) -> tuple[Any, Any]:
    """The same weights in-process, straight through transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, local_files_only=True)
    model.eval()  # type: ignore[no-untyped-call]
    return tokenizer, model


def greedy(bare: tuple[Any, Any], ids: list[int], n: int) -> str:
    import torch

    tokenizer, model = bare
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0
        )
    return str(tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True))


async def predict(served: Served, **fields: Any) -> pb.Reply:
    reply: pb.Reply = await served.client.backend.Predict(pb.PredictOptions(**fields))
    return reply


async def stream(served: Served, **fields: Any) -> list[pb.Reply]:
    replies: list[pb.Reply] = await served.client.backend.PredictStream(pb.PredictOptions(**fields))
    return replies


async def error_of(call: Any) -> GRPCError:
    with pytest.raises(GRPCError) as err:
        await call
    return err.value


async def test_greedy_predict_matches_transformers_in_process(llm: Served, bare: tuple[Any, Any]) -> None:
    ids = bare[0](PROMPT)["input_ids"]
    reply = await predict(llm, Prompt=PROMPT, Tokens=24, Temperature=0, IgnoreEOS=True)
    assert reply.message.decode() == greedy(bare, ids, 24)
    assert reply.tokens == 24
    assert reply.prompt_tokens == len(ids)
    assert reply.timing_prompt_processing > 0
    assert reply.timing_token_generation > 0


async def test_a_stream_arrives_in_pieces_that_join_to_predicts_text(llm: Served) -> None:
    fields: dict[str, Any] = {
        "Prompt": PROMPT,
        "Tokens": 40,
        "Temperature": 1.0,
        "Seed": 5,
        "IgnoreEOS": True,
    }
    whole = await predict(llm, **fields)
    chunks = await stream(llm, **fields)
    assert len([c for c in chunks if c.message]) > 20  # token by token, not all at the end
    assert b"".join(c.message for c in chunks) == whole.message
    assert chunks[-1].tokens == 40
    assert chunks[-1].prompt_tokens == whole.prompt_tokens
    assert [c.tokens for c in chunks] == sorted(c.tokens for c in chunks)


async def test_the_same_seed_gives_the_same_sample(llm: Served) -> None:
    fields: dict[str, Any] = {
        "Prompt": PROMPT,
        "Tokens": 30,
        "Temperature": 1.0,
        "TopK": 50,
        "IgnoreEOS": True,
    }
    first = await predict(llm, Seed=7, **fields)
    again = await predict(llm, Seed=7, **fields)
    other = await predict(llm, Seed=8, **fields)
    assert first.message == again.message
    assert first.message != other.message


async def test_stop_prompts_end_the_output_before_the_stop_string(llm: Served) -> None:
    fields: dict[str, Any] = {
        "Prompt": PROMPT,
        "Tokens": 40,
        "Temperature": 1.0,
        "Seed": 3,
        "IgnoreEOS": True,
    }
    full = (await predict(llm, **fields)).message.decode()
    middle = len(full) // 2
    stop = full[middle : middle + 3]
    expected = full[: full.find(stop)]
    cut = await predict(llm, StopPrompts=[stop], **fields)
    assert cut.message.decode() == expected
    assert cut.tokens < 40
    streamed = await stream(llm, StopPrompts=[stop], **fields)
    assert b"".join(c.message for c in streamed).decode() == expected


async def test_chat_messages_are_rendered_with_the_models_template(
    llm: Served, bare: tuple[Any, Any]
) -> None:
    tokenizer = bare[0]
    messages = [{"role": m.role, "content": m.content} for m in CHAT]
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    reply = await predict(
        llm, UseTokenizerTemplate=True, Messages=CHAT, Tokens=12, Temperature=0, IgnoreEOS=True
    )
    assert reply.prompt_tokens == len(ids)
    assert reply.message.decode() == greedy(bare, list(ids), 12)
    assert ids.count(tokenizer.bos_token_id) == 1  # the template's BOS, not a second one


async def test_metadata_reaches_the_chat_template(llm: Served, bare: tuple[Any, Any]) -> None:
    plain = await predict(llm, UseTokenizerTemplate=True, Messages=CHAT, Tokens=1)
    thinking = await predict(
        llm, UseTokenizerTemplate=True, Messages=CHAT, Tokens=1, Metadata={"enable_thinking": "true"}
    )
    extra = len(bare[0]("<|think|>", add_special_tokens=False)["input_ids"])
    assert thinking.prompt_tokens == plain.prompt_tokens + extra


async def test_an_unknown_chat_role_is_invalid_argument(llm: Served) -> None:
    messages = [pb.Message(role="wizard", content="hi")]
    err = await error_of(predict(llm, UseTokenizerTemplate=True, Messages=messages))
    assert err.status == Status.INVALID_ARGUMENT
    assert "wizard" in (err.message or "")
    assert (await predict(llm, Prompt=PROMPT, Tokens=2)).message  # still serving


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"Temperature": float("nan")}, "Temperature is nan"),
        ({"Temperature": 0.7, "MinP": float("inf")}, "MinP is inf"),
        ({"Temperature": 0.7, "MinP": 1.5}, "MinP is 1.5"),
        ({"Penalty": 1e30}, "Penalty is 1e+30"),
    ],
)
async def test_sampling_values_generate_cannot_take_are_invalid_argument(
    llm: Served, fields: dict[str, float], named: str
) -> None:
    # These reached generate() and came back INTERNAL with a traceback.
    err = await error_of(predict(llm, Prompt="Hi", Tokens=4, **fields))
    assert err.status == Status.INVALID_ARGUMENT
    assert named in (err.message or "")
    assert (await predict(llm, Prompt="Hi", Tokens=2)).tokens > 0


async def test_a_prompt_longer_than_the_context_names_both_numbers(
    llm: Served, bare: tuple[Any, Any]
) -> None:
    prompt = "the quick brown fox " * 1500
    tokens = len(bare[0](prompt)["input_ids"])
    context = bare[1].config.max_position_embeddings
    assert tokens > context
    err = await error_of(predict(llm, Prompt=prompt))
    assert err.status == Status.INVALID_ARGUMENT
    assert str(tokens) in (err.message or "")
    assert str(context) in (err.message or "")
    assert (await predict(llm, Prompt=PROMPT, Tokens=2)).tokens >= 1  # still serving


async def test_a_huge_prompt_is_refused_without_tokenizing_all_of_it(llm: Served) -> None:
    prompt = "the quick brown fox " * 400_000  # 8 MB: tokenizing all of it took longer than the deadline
    err = await error_of(llm.client.backend.Predict(pb.PredictOptions(Prompt=prompt), timeout=20))
    assert err.status == Status.INVALID_ARGUMENT
    assert "the prompt is over 4096 tokens, the model's context" in (err.message or "")


async def test_tokenize_string_gives_the_models_token_ids(llm: Served, bare: tuple[Any, Any]) -> None:
    result = await llm.client.backend.TokenizeString(pb.PredictOptions(Prompt=PROMPT))
    expected = bare[0](PROMPT)["input_ids"]
    assert list(result.tokens) == expected
    assert result.length == len(expected)


async def test_a_causal_lm_embeds_by_mean_pooling(llm: Served, bare: tuple[Any, Any]) -> None:
    result = await llm.client.backend.Embedding(pb.PredictOptions(Embeddings=PROMPT))
    assert result.dim == bare[1].config.hidden_size
    assert result.tokens == len(bare[0](PROMPT)["input_ids"])


def generating() -> bool:
    return any(t.name == "generate" for t in threading.enumerate())


async def wait_until(condition: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.01)
    return bool(condition())


async def test_a_cancelled_stream_stops_generating(llm: Served) -> None:
    long: dict[str, Any] = {"Prompt": PROMPT, "Tokens": 3000, "Temperature": 0, "IgnoreEOS": True}
    started = time.monotonic()
    async with connect(llm.addr) as client, client.backend.PredictStream.open() as call:
        await call.send_message(pb.PredictOptions(**long), end=True)
        first = await call.recv_message()
        assert first is not None
        assert generating()
        await call.cancel()
    # 3000 tokens take many seconds here; a stop at the next token frees the slot at once.
    assert await wait_until(lambda: not generating() and not llm.runtime.admission.running, 3)
    assert time.monotonic() - started < 5
    assert (await predict(llm, Prompt=PROMPT, Tokens=3)).tokens == 3


async def test_a_deadline_stops_predict(llm: Served) -> None:
    long: dict[str, Any] = {"Prompt": PROMPT, "Tokens": 3000, "Temperature": 0, "IgnoreEOS": True}
    with pytest.raises((GRPCError, TimeoutError)):
        await llm.client.backend.Predict(pb.PredictOptions(**long), timeout=0.5)
    assert await wait_until(lambda: not generating() and not llm.runtime.admission.running, 3)
    assert (await predict(llm, Prompt=PROMPT, Tokens=3)).tokens == 3


async def test_a_queued_generation_waits_in_the_runtime_queue_holding_no_slot(llm: Served) -> None:
    long: dict[str, Any] = {"Prompt": PROMPT, "Tokens": 3000, "Temperature": 0, "IgnoreEOS": True}
    admission = llm.runtime.admission
    async with connect(llm.addr) as client, client.backend.PredictStream.open() as call:
        await call.send_message(pb.PredictOptions(**long), end=True)
        assert await call.recv_message() is not None
        queued = asyncio.create_task(predict(llm, Prompt=PROMPT, Tokens=3))
        # max_generations is 1: the second waits in the runtime's queue (bounded, counted), not in a slot.
        assert await wait_until(lambda: admission.waiting == 1, 3)
        assert admission.running == 1
        embedded = await llm.client.backend.Embedding(pb.PredictOptions(Embeddings=PROMPT), timeout=10)
        assert embedded.dim > 0
        await call.cancel()
    assert (await queued).tokens == 3
