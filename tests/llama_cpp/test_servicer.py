"""llama-cpp over real gRPC with a real GGUF (Gemma 3 270M, a base model: completions, not chat quality)."""

from __future__ import annotations

import asyncio
import functools
import json
import math
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from localfleet.client import Client, connect
from localfleet.proto import backend_pb2 as pb
from localfleet.testing import Process, Served, serving, spawn
from localfleet_llama_cpp.servicer import LlamaCpp
from tests.llama_cpp.conftest import load_request

pytestmark = pytest.mark.asyncio

PROMPT = "The capital of France is"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def greedy(prompt: str = PROMPT, tokens: int = 16, **fields: Any) -> pb.PredictOptions:
    return pb.PredictOptions(Prompt=prompt, Tokens=tokens, Temperature=0, **fields)


async def stream(client: Client, request: pb.PredictOptions) -> list[pb.Reply]:
    async with client.backend.PredictStream.open() as call:
        await call.send_message(request, end=True)
        return [reply async for reply in call]


async def error(call: Any) -> GRPCError:
    with pytest.raises(GRPCError) as err:
        await call
    return err.value


def in_process_greedy(path: Path, prompt: str, tokens: int) -> bytes:
    """The same generation straight through llama-cpp-python, for comparison."""
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=512, n_batch=512, n_threads=2, verbose=False)
    try:
        out: list[int] = []
        for token in llm.generate(llm.tokenize(prompt.encode(), add_bos=True, special=True), temp=0):
            if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token) or len(out) == tokens:
                break
            out.append(token)
        return llm.detokenize(out)
    finally:
        llm.close()


# -- generation --------------------------------------------------------------------------------------
async def test_predict_matches_llama_cpp_python_greedy(llama: Served, gemma: Path) -> None:
    reply = await llama.client.backend.Predict(greedy(tokens=12))
    assert reply.message == in_process_greedy(gemma, PROMPT, 12)
    assert reply.tokens == 12
    assert reply.prompt_tokens == 6  # <bos> + 5 words
    assert reply.timing_prompt_processing > 0
    assert reply.timing_token_generation > 0
    assert not reply.chat_deltas  # a templated prompt from core: core parses the text itself


async def test_joined_stream_equals_predict_for_the_same_seed(llama: Served) -> None:
    request = pb.PredictOptions(
        Prompt="Once upon a time", Tokens=24, Temperature=0.9, TopP=0.95, TopK=40, Seed=7
    )
    whole = await llama.client.backend.Predict(request)
    again = await llama.client.backend.Predict(request)
    chunks = await stream(llama.client, request)
    assert whole.message == again.message
    assert b"".join(c.message for c in chunks) == whole.message
    assert len(chunks) >= 20  # one chunk per token, plus the last
    assert chunks[-1].tokens == whole.tokens == 24
    assert chunks[-1].prompt_tokens == whole.prompt_tokens
    other = await llama.client.backend.Predict(
        pb.PredictOptions(Prompt="Once upon a time", Tokens=24, Temperature=0.9, TopP=0.95, TopK=40, Seed=8)
    )
    assert other.message != whole.message


async def test_multibyte_text_may_split_across_chunks_but_joins_whole(llama: Served) -> None:
    request = greedy("日本の首都は東京です。大阪は", tokens=24)
    chunks = await stream(llama.client, request)
    joined = b"".join(c.message for c in chunks)
    assert joined == (await llama.client.backend.Predict(request)).message
    joined.decode("utf-8")  # whole characters once joined


@pytest.mark.parametrize(
    "fields",
    [
        {"TopK": 1, "Temperature": 1.5, "Seed": 3},
        {"MinP": 1.0, "Temperature": 1.5, "Seed": 3},
        {"TopP": 0.0001, "Temperature": 1.5, "Seed": 3},
    ],
    ids=["top-k 1", "min-p 1", "tiny top-p"],
)
async def test_truncating_samplers_leave_only_the_best_token(llama: Served, fields: dict[str, Any]) -> None:
    expected = (await llama.client.backend.Predict(greedy(tokens=12))).message
    reply = await llama.client.backend.Predict(pb.PredictOptions(Prompt=PROMPT, Tokens=12, **fields))
    assert reply.message == expected


async def test_penalties_change_a_repetitive_greedy_output(llama: Served) -> None:
    plain = (await llama.client.backend.Predict(greedy(tokens=40))).message
    assert plain.count(b"capital") >= 2  # the base model repeats itself
    for field in ("Penalty", "FrequencyPenalty", "PresencePenalty"):
        request = greedy(tokens=40)
        setattr(request, field, 1.5)
        penalised = (await llama.client.backend.Predict(request)).message
        assert penalised != plain, field


async def test_stop_prompts_end_the_output_before_them(llama: Served) -> None:
    plain = (await llama.client.backend.Predict(greedy(tokens=16))).message
    assert b" France." in plain
    request = greedy(tokens=16, StopPrompts=["France."])
    cut = await llama.client.backend.Predict(request)
    assert cut.message == plain[: plain.index(b"France.")]
    chunks = await stream(llama.client, request)
    assert b"".join(c.message for c in chunks) == cut.message


async def test_tokens_zero_means_the_backend_default(gemma: Path) -> None:
    async with serving(LlamaCpp()) as served:
        assert (await served.client.backend.LoadModel(load_request(gemma, "max_tokens:5"))).success
        reply = await served.client.backend.Predict(greedy(tokens=0))
        assert reply.tokens == 5


async def test_generation_stops_when_the_context_is_full(gemma: Path) -> None:
    async with serving(LlamaCpp()) as served:
        loaded = await served.client.backend.LoadModel(load_request(gemma, ContextSize=256))
        assert "context 256" in loaded.message  # llama.cpp rounds a context up to a multiple of 256
        reply = await served.client.backend.Predict(greedy(tokens=0))
        assert reply.prompt_tokens + reply.tokens == 256


async def test_grammar_constrains_the_output(llama: Served) -> None:
    choice = await llama.client.backend.Predict(
        greedy("Is Paris in France?", Grammar='root ::= "yes" | "no"')
    )
    assert choice.message in (b"yes", b"no")
    numbers = await llama.client.backend.Predict(
        pb.PredictOptions(
            Prompt="Some numbers:",
            Tokens=40,
            Temperature=0.8,
            Seed=1,
            Grammar='root ::= "[" num ("," num){2,4} "]"\nnum ::= [1-9] [0-9]{0,2}',
        )
    )
    values = json.loads(numbers.message)
    assert 3 <= len(values) <= 5
    assert all(isinstance(v, int) for v in values)


async def test_eos_ends_generation_unless_ignored(llama: Served) -> None:
    eos_first = '{"1": 100}'  # Gemma's <eos> is token 1: make it the model's first choice
    stopped = await llama.client.backend.Predict(greedy(tokens=8, LogitBias=eos_first))
    assert stopped.message == b""
    assert stopped.tokens == 0
    ignored = await llama.client.backend.Predict(greedy(tokens=8, LogitBias=eos_first, IgnoreEOS=True))
    assert ignored.tokens == 8
    assert ignored.message


async def test_logprobs_in_openai_shape(llama: Served) -> None:
    request = greedy(tokens=6, Logprobs=1, TopLogprobs=3)
    reply = await llama.client.backend.Predict(request)
    content = json.loads(reply.logprobs)["content"]
    assert len(content) == 6
    assert b"".join(bytes(e["bytes"]) for e in content) == reply.message
    for entry in content:
        assert set(entry) == {"id", "token", "logprob", "bytes", "top_logprobs"}
        assert entry["logprob"] <= 0
        top = entry["top_logprobs"]
        assert len(top) == 3
        assert [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
        assert top[0]["id"] == entry["id"]  # greedy: the sampled token is the most likely one
        assert math.isclose(top[0]["logprob"], entry["logprob"])
    chunks = await stream(llama.client, request)
    assert json.loads(chunks[0].logprobs)["content"] == content[:1]  # each chunk: its own token
    assert json.loads(chunks[-1].logprobs)["content"] == content  # the last: all, as core keeps the last


# -- chat ----------------------------------------------------------------------------------------------
async def rendered(client: Client, request: pb.PredictOptions) -> str:
    """The prompt Predict would feed the model, through TokenizeString + Detokenize."""
    tokens = await client.backend.TokenizeString(request)
    return str((await client.backend.Detokenize(pb.DetokenizeRequest(tokens=tokens.tokens))).content)


def chat(*messages: tuple[str, str], **fields: Any) -> pb.PredictOptions:
    return pb.PredictOptions(
        UseTokenizerTemplate=True,
        Messages=[pb.Message(role=role, content=content) for role, content in messages],
        Tokens=8,
        Temperature=0,
        **fields,
    )


async def test_messages_render_with_the_models_template(llama: Served) -> None:
    # This GGUF has no template: llama.cpp's fallback (ChatML) renders it.
    text = await rendered(llama.client, chat(("system", "Be brief."), ("user", "Hi!")))
    assert (
        text == "<bos><|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
    )
    reply = await llama.client.backend.Predict(chat(("user", "Hi!")))
    assert reply.chat_deltas[0].content == reply.message.decode()
    assert reply.prompt_tokens == len(
        (await llama.client.backend.TokenizeString(chat(("user", "Hi!")))).tokens
    )


async def test_a_chat_template_option_and_metadata_reach_the_template(gemma: Path) -> None:
    template = (
        "{{ bos_token }}{% for m in messages %}"
        "<start_of_turn>{{ 'model' if m.role == 'assistant' else m.role }}\n"
        "{{ m.content }}<end_of_turn>\n{% endfor %}<start_of_turn>model\n"
        "{% if enable_thinking %}<think>\n{% endif %}"
    )
    async with serving(LlamaCpp()) as served:
        loaded = await served.client.backend.LoadModel(load_request(gemma, f"chat_template:{template}"))
        assert loaded.success, loaded.message
        assert "chat_template option" in loaded.message
        request = chat(("user", "Hi"))
        assert (
            await rendered(served.client, request)
            == "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
        )
        request.Metadata["enable_thinking"] = "true"
        assert (await rendered(served.client, request)).endswith("<start_of_turn>model\n<think>\n")
        # The template opened a reasoning block: the output up to </think> is reasoning.
        request.Grammar = 'root ::= "Short thought.</think>Hello."'
        request.Tokens = 40
        reply = await served.client.backend.Predict(request)
        [delta] = reply.chat_deltas
        assert (delta.reasoning_content, delta.content) == ("Short thought.", "Hello.")


async def test_tools_render_and_tool_calls_come_back_parsed(llama: Served) -> None:
    request = chat(("user", "Weather in Paris?"), Tools=json.dumps([WEATHER_TOOL]), ToolChoice='"auto"')
    prompt = await rendered(llama.client, request)
    assert '"name": "get_weather"' in prompt
    assert "<tool_call>" in prompt
    # A base model does not call tools by itself: a grammar makes it write the Hermes format.
    request.Grammar = (
        'root ::= "<think>Paris weather needed.</think>\\n<tool_call>\\n" call "\\n</tool_call>"\n'
        'call ::= "{\\"name\\": \\"get_weather\\", \\"arguments\\": {\\"city\\": \\"" [A-Z] [a-z]+ "\\"}}"'
    )
    request.Tokens = 60
    reply = await llama.client.backend.Predict(request)
    [delta] = reply.chat_deltas
    assert delta.reasoning_content == "Paris weather needed."
    assert delta.content == ""
    [call] = delta.tool_calls
    assert (call.index, call.name) == (0, "get_weather")
    assert call.id.startswith("call_")
    assert set(json.loads(call.arguments)) == {"city"}
    assert b"<tool_call>" in reply.message  # the raw text stays for core's own parsers

    chunks = await stream(llama.client, request)
    deltas = [d for c in chunks for d in c.chat_deltas]
    assert "".join(d.reasoning_content for d in deltas) == "Paris weather needed."
    assert "".join(d.content for d in deltas) == ""
    [streamed] = [t for d in deltas for t in d.tool_calls]
    assert (streamed.name, streamed.arguments) == (call.name, call.arguments)
    # Tool calls arrive once, in the chunk that closes them, not before.
    closing = next(i for i, c in enumerate(chunks) if any(d.tool_calls for d in c.chat_deltas))
    assert b"</tool_call>" in b"".join(c.message for c in chunks[: closing + 1])


async def test_tool_choice_none_renders_no_tools(llama: Served) -> None:
    request = chat(("user", "Weather?"), Tools=json.dumps([WEATHER_TOOL]), ToolChoice="none")
    assert "get_weather" not in await rendered(llama.client, request)


async def test_assistant_tool_calls_and_tool_results_render(llama: Served) -> None:
    calls = [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
        }
    ]
    request = pb.PredictOptions(
        UseTokenizerTemplate=True,
        Tools=json.dumps([WEATHER_TOOL]),
        Messages=[
            pb.Message(role="user", content="Weather in Oslo?"),
            pb.Message(role="assistant", content="", tool_calls=json.dumps(calls)),
            pb.Message(role="tool", content='{"temp": 3}', tool_call_id="call_1", name="get_weather"),
        ],
    )
    prompt = await rendered(llama.client, request)
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>' in prompt
    assert '<tool_response>\n{"temp": 3}\n</tool_response>' in prompt


# -- embeddings and tokens ---------------------------------------------------------------------------
async def test_embedding_is_a_normalised_vector(llama: Served) -> None:
    first = await llama.client.backend.Embedding(pb.PredictOptions(Embeddings="A man is eating food."))
    again = await llama.client.backend.Embedding(pb.PredictOptions(Embeddings="A man is eating food."))
    other = await llama.client.backend.Embedding(pb.PredictOptions(Embeddings="The girl is carrying a baby."))
    assert first.dim == len(first.embeddings) == 640
    assert first.tokens == 7
    assert math.isclose(sum(v * v for v in first.embeddings), 1.0, rel_tol=1e-4)
    assert list(first.embeddings) == list(again.embeddings)
    assert list(first.embeddings) != list(other.embeddings)
    # Generation is unaffected by an embedding on the same context.
    reply = await llama.client.backend.Predict(greedy(tokens=12))
    assert reply.message.startswith(b" the capital")


async def test_tokenize_and_detokenize_round_trip(llama: Served) -> None:
    tokens = await llama.client.backend.TokenizeString(pb.PredictOptions(Prompt="Hello world"))
    assert tokens.length == len(tokens.tokens) == 2  # no BOS added, as LocalAI's llama.cpp backend
    text = await llama.client.backend.Detokenize(pb.DetokenizeRequest(tokens=tokens.tokens))
    assert text.content == "Hello world"


# -- concurrency and cancellation --------------------------------------------------------------------
async def test_concurrent_calls_wait_their_turn_and_all_answer(llama: Served) -> None:
    expected = (await llama.client.backend.Predict(greedy(tokens=10))).message
    finished: list[int] = []

    async def one(i: int) -> bytes:
        reply = await llama.client.backend.Predict(greedy(tokens=10))
        finished.append(i)
        return bytes(reply.message)

    tasks = []
    for i in range(4):
        tasks.append(asyncio.create_task(one(i)))
        await asyncio.sleep(0.05)  # arrive in this order
    assert await asyncio.gather(*tasks) == [expected] * 4
    assert finished == [0, 1, 2, 3]  # served in order of arrival


async def test_a_cancelled_stream_stops_within_one_token(llama: Served) -> None:
    received = 0
    async with llama.client.backend.PredictStream.open() as call:
        await call.send_message(greedy(tokens=400), end=True)
        async for _ in call:
            received += 1
            if received == 5:
                break
        await call.cancel()
    runtime = llama.runtime
    deadline = time.monotonic() + 5
    while runtime.in_flight and time.monotonic() < deadline:  # the slot is freed once the engine stopped
        await asyncio.sleep(0.01)
    assert runtime.in_flight == 0
    # The context holds the prompt and every generated token but the last (sampled, never evaluated).
    generated = runtime.backend.engine().llm.n_tokens - 6 + 1
    assert received <= generated <= received + 1  # at most one more than the client read
    reply = await llama.client.backend.Predict(greedy(tokens=2))
    assert reply.tokens == 2


# -- bad input ---------------------------------------------------------------------------------------
async def still_serving(served: Served) -> None:
    reply = await served.client.backend.Predict(greedy(tokens=4))
    assert reply.tokens == 4
    status = await served.client.backend.Status(pb.HealthMessage())
    assert status.state == pb.StatusResponse.READY


async def test_unknown_chat_role_is_invalid_argument(llama: Served) -> None:
    err = await error(llama.client.backend.Predict(chat(("wizard", "hi"))))
    assert err.status == Status.INVALID_ARGUMENT
    assert "'wizard'" in (err.message or "")
    assert "user" in (err.message or "")
    await still_serving(llama)


async def test_a_prompt_longer_than_the_context_names_both_numbers(llama: Served) -> None:
    long_prompt = " ".join(["word"] * 600)
    for call in (
        llama.client.backend.Predict(greedy(long_prompt)),
        stream(llama.client, greedy(long_prompt)),
    ):
        err = await error(call)
        assert err.status == Status.INVALID_ARGUMENT
        assert "601 tokens" in (err.message or "")
        assert "512" in (err.message or "")
    await still_serving(llama)


async def test_an_invalid_grammar_is_invalid_argument(llama: Served) -> None:
    for grammar in ('root ::= "unclosed', 'start ::= "no root rule"', "root ::= undefined-rule"):
        err = await error(llama.client.backend.Predict(greedy(Grammar=grammar)))
        assert err.status == Status.INVALID_ARGUMENT, grammar
        assert "Grammar" in (err.message or "")
    await still_serving(llama)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"Tools": "{not json"}, "Tools is not valid JSON"),
        ({"Tools": '{"type": "function"}'}, "Tools must be a JSON list"),
        ({"LogitBias": '{"abc": 1}'}, "LogitBias"),
        ({"LogitBias": '{"99999999": 1}'}, "outside the vocabulary"),
        ({"Images": ["aGVsbG8="]}, "without a multimodal projector"),
        ({"Tools": "[" * 100_000 + "]" * 100_000}, "Tools '[[[["),
        ({"ToolChoice": "{" * 1000}, "more than 64 levels"),
        ({"LogitBias": '{"5": NaN}'}, "LogitBias[5] is nan"),
        ({"LogitBias": json.dumps({str(i): -1 for i in range(5000)})}, "at most 4096"),
        ({"StopPrompts": ["</s>"] * 300}, "StopPrompts has 300 strings; at most 256"),
        ({"Temperature": float("nan")}, "Temperature is nan"),
        ({"FrequencyPenalty": 3e38}, "FrequencyPenalty is 3e+38"),
        ({"Penalty": 1e-30}, "Penalty is 1e-30"),
        ({"Grammar": 'root ::= "' + "a" * 70_000 + '"'}, "at most 65536"),
    ],
)
async def test_malformed_requests_are_invalid_argument(
    llama: Served, fields: dict[str, Any], expected: str
) -> None:
    request = chat(("user", "hi"))
    for name, value in fields.items():
        if isinstance(value, list):
            getattr(request, name).extend(value)
        else:
            setattr(request, name, value)
    err = await error(llama.client.backend.Predict(request))
    assert err.status == Status.INVALID_ARGUMENT
    assert expected in (err.message or "")
    assert len(err.message or "") < 400  # an excerpt of what the client sent, never all of it


async def test_a_moderately_nested_grammar_still_constrains(llama: Served) -> None:
    grammar = "root ::= " + "(" * 40 + '"yes" | ("n" "o")' + ")" * 40
    reply = await llama.client.backend.Predict(greedy("Is Paris in France?", Grammar=grammar))
    assert reply.message in (b"yes", b"no")


async def test_a_prompt_far_longer_than_the_context_is_refused_before_tokenizing(llama: Served) -> None:
    started = time.perf_counter()
    err = await error(llama.client.backend.Predict(greedy(" " * 5_000_000)))  # minutes to tokenize
    assert time.perf_counter() - started < 10
    assert err.status == Status.INVALID_ARGUMENT
    assert "the prompt is 5000000 bytes" in (err.message or "")
    assert "ContextSize" in (err.message or "")
    embed = llama.client.backend.Embedding(pb.PredictOptions(Embeddings="word " * 100_000))
    assert "the text to embed" in ((await error(embed)).message or "")
    await still_serving(llama)


async def test_embedding_tokens_outside_the_vocabulary_are_invalid_argument(llama: Served) -> None:
    for tokens in ([99999999], [-5]):
        err = await error(llama.client.backend.Embedding(pb.PredictOptions(EmbeddingTokens=tokens)))
        assert err.status == Status.INVALID_ARGUMENT
        assert "EmbeddingTokens" in (err.message or "")
    await still_serving(llama)


async def test_a_missing_model_file_fails_the_load_and_keeps_the_loaded_model(
    llama: Served, tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere.gguf"
    result = await llama.client.backend.LoadModel(load_request(missing))
    assert not result.success
    assert str(missing) in result.message
    await still_serving(llama)


async def test_a_file_that_is_not_a_gguf_is_named_but_its_bytes_are_not_echoed(
    llama: Served, tmp_path: Path
) -> None:
    secret = tmp_path / "grammar.gguf"
    secret.write_bytes(b"root ::= token-s3cr3t\n")
    result = await llama.client.backend.LoadModel(load_request(secret))
    assert not result.success
    assert f"{secret} is not a GGUF file (no GGUF magic" in result.message
    assert "root" not in result.message.replace(str(secret), "")
    assert "s3cr3t" not in result.message


async def test_a_file_that_is_not_a_gguf_is_refused_fast(llama: Served, tmp_path: Path) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 this is a zip, not a GGUF" * 1000)
    started = time.perf_counter()
    result = await llama.client.backend.LoadModel(load_request(fake))
    assert time.perf_counter() - started < 0.5
    assert not result.success
    assert "not a GGUF" in result.message
    assert str(fake) in result.message
    await still_serving(llama)


async def test_a_gguf_that_fails_to_load_is_tried_beside_the_serving_model(
    llama: Served, tmp_path: Path
) -> None:
    # GGUF magic, then nothing llama.cpp can read: it passes refuse() and fails inside llama.cpp.
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + b"\xff" * 64)
    started = time.perf_counter()
    result = await llama.client.backend.LoadModel(load_request(broken))
    assert not result.success
    assert result.message.endswith("serves on (the load was tried beside it)"), result.message
    assert time.perf_counter() - started < 5  # no second load of the serving model
    status = await llama.client.backend.Status(pb.HealthMessage())
    assert status.state == pb.StatusResponse.READY
    await still_serving(llama)


@pytest.mark.parametrize(
    ("option", "fields", "expected"),
    [
        ("", {"FlashAttention": "sometimes"}, "FlashAttention"),
        ("", {"CacheTypeKey": "q3_weird"}, "CacheTypeKey"),
        ("", {"LoraAdapter": "missing-lora.gguf"}, "LoraAdapter file not found"),
        ("", {"MMProj": "missing-mmproj.gguf"}, "MMProj file not found"),
        ("max_tokens:-1", {}, "max_tokens"),
        ("colour:blue", {}, "unknown option 'colour'"),
    ],
)
async def test_bad_load_options_fail_the_load_clearly(
    gemma: Path, option: str, fields: dict[str, Any], expected: str
) -> None:
    async with serving(LlamaCpp()) as served:
        result = await served.client.backend.LoadModel(
            load_request(gemma, *[o for o in [option] if o], **fields)
        )
        assert not result.success
        assert expected in result.message


async def test_model_options_are_honoured(gemma: Path) -> None:
    async with serving(LlamaCpp()) as served:
        request = load_request(
            gemma,
            ContextSize=256,
            NBatch=64,
            Threads=64,  # more than this machine has: capped
            FlashAttention="on",
            CacheTypeKey="q8_0",
            MMap=False,
            RopeFreqBase=1000000.0,
            Embeddings=True,
        )
        result = await served.client.backend.LoadModel(request)
        assert result.success, result.message
        assert "context 256" in result.message
        reply = await served.client.backend.Predict(greedy(tokens=6))
        assert reply.tokens == 6
        embedding = await served.client.backend.Embedding(pb.PredictOptions(Embeddings="hello"))
        assert embedding.dim == 640
        status = await served.client.backend.Status(pb.HealthMessage())
        assert status.memory.breakdown["model_weights"] > 100_000_000


def sizes(folder: Path) -> dict[str, int]:
    return {path.name: path.stat().st_size for path in folder.iterdir()}


async def test_the_bundled_model_loads_by_name_without_a_model_path(
    gemma: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    async with serving(LlamaCpp()) as served:
        request = pb.ModelOptions(Model="gemma-3-270m-q4_k_m.gguf", ContextSize=512, Threads=2)
        result = await served.client.backend.LoadModel(request)
        assert result.success, result.message
        reply = await served.client.backend.Predict(greedy(tokens=4))
        assert reply.tokens == 4
    # Assembled whole into the user's cache, no temporary file left beside it.
    assert sizes(tmp_path / "localfleet" / "llama-cpp") == {gemma.name: sizes(gemma.parent)[gemma.name]}


# -- a real process ------------------------------------------------------------------------------------
@asynccontextmanager
async def ready_client(process: Process) -> AsyncIterator[Client]:
    async with connect(process.addr) as client:
        deadline = time.monotonic() + 30
        while not await client.ready() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert await client.ready(), "".join(process.log)
        yield client


async def test_requests_that_ended_the_process_are_refused_and_it_keeps_serving(gemma: Path) -> None:
    """Each of these ended llama-cpp before it was bounded: SIGSEGV in the grammar parser, or an abort
    when llama.cpp's grammar accepted the token sampled where it allows none (valid GBNF that no token
    satisfies, at once or after a few tokens; NaN probabilities). A real process shows it outlives them."""
    deep = "root ::= " + "(" * 20000 + '"a"' + ")" * 20000
    requests = {
        "20000-deep grammar": (greedy(Grammar=deep), "at most 256 levels"),
        "empty range": (greedy(Grammar="root ::= [z-a]"), "Grammar allows no token"),
        "empty range later": (greedy(Grammar='root ::= "Paris" [z-a]'), "Grammar allows no token"),
        "token outside the vocabulary": (greedy(Grammar="root ::= <[999999999]>"), "Grammar allows no token"),
        # not a crash but a stall: one step of this took minutes, Health fine but the model lost to all
        "60 optional classes in a row": (
            greedy(Grammar="root ::= " + " ".join(["[a-z]?"] * 60)),
            "60 optional character classes in a row",
        ),
        "NaN temperature": (
            pb.PredictOptions(Prompt=PROMPT, Tokens=4, Temperature=float("nan"), Grammar='root ::= "no"'),
            "Temperature is nan",
        ),
    }
    args = ("--model", gemma.name, "--model-path", str(gemma.parent))
    with spawn("llama-cpp", *args, env={"LOCALAI_BACKEND_PARENT_WATCH": "false"}) as process:
        async with ready_client(process) as client:
            for name, (request, expected) in requests.items():
                for send in (client.backend.Predict, functools.partial(stream, client)):
                    err = await error(send(request))
                    assert err.status == Status.INVALID_ARGUMENT, name
                    assert expected in (err.message or ""), name
                    assert len(err.message or "") < 400, name  # an excerpt of the request at most
                    reply = await client.backend.Predict(greedy(tokens=4))
                    assert reply.tokens == 4, name
        assert process.popen.poll() is None


async def test_serve_loads_the_bundled_model_by_name(gemma: Path, tmp_path: Path) -> None:
    cache = tmp_path / "localfleet" / "llama-cpp"
    cache.mkdir(parents=True)
    os.link(gemma, cache / gemma.name)  # as a first load leaves it: this load reuses it
    env = {
        "LOCALAI_BACKEND_PARENT_WATCH": "false",
        "XDG_CACHE_HOME": str(tmp_path),
        "LOCALFLEET_MODEL_PATH": "",
    }
    with spawn("llama-cpp", "--model", "gemma-3-270m-q4_k_m.gguf", env=env) as process:
        async with ready_client(process) as client:
            reply = await client.backend.Predict(greedy(tokens=3))
            assert reply.tokens == 3


async def test_serve_loads_a_startup_model_then_turns_ready(gemma: Path) -> None:
    args = ("--model", gemma.name, "--model-path", str(gemma.parent), "--option", "max_tokens:3")
    with spawn("llama-cpp", *args, env={"LOCALAI_BACKEND_PARENT_WATCH": "false"}) as process:
        async with connect(process.addr) as client:
            deadline = time.monotonic() + 30
            while not await client.ready() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert await client.ready()
            reply = await client.backend.Predict(pb.PredictOptions(Prompt=PROMPT, Temperature=0))
            assert reply.tokens == 3
            assert reply.message.startswith(b" the")


async def test_the_nice_option_lowers_only_the_compute_threads(gemma: Path) -> None:
    def niceness() -> set[int]:
        return {os.getpriority(os.PRIO_PROCESS, int(tid)) for tid in os.listdir("/proc/self/task")}

    before = niceness()
    async with serving(LlamaCpp()) as served:
        assert (await served.client.backend.LoadModel(load_request(gemma, "nice:7"))).success
        assert (await served.client.backend.Predict(greedy(tokens=2))).tokens == 2
        assert 7 in niceness() - before  # the worker that computed (and its OpenMP team)
        assert os.getpriority(os.PRIO_PROCESS, 0) != 7  # the event loop's thread is untouched
