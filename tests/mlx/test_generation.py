"""mlx over real gRPC on a tiny scripted MLX Llama built in the test session (tests/mlx/models.py).

Expected outputs are not written down where the weights decide them: they come from the same folder run
by mlx-lm in-process. Where the script decides them (tool calls, reasoning), they are its strings.
"""

from __future__ import annotations

import json
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
from localfleet_mlx.servicer import Mlx
from tests.mlx.models import ANSWER, CALL, REASONING

pytestmark = pytest.mark.asyncio(loop_scope="module")

PROMPT = "The quick brown fox"
CHAT = [pb.Message(role="user", content="What is the weather in Paris?")]
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


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def llm(tiny_mlx: Path) -> AsyncIterator[tuple[Served, Mlx]]:
    backend = Mlx()
    async with serving(backend) as served:
        result = await served.client.backend.LoadModel(pb.ModelOptions(Model=str(tiny_mlx)))
        assert result.success, result.message
        assert result.message.startswith("llama model")
        yield served, backend


@pytest.fixture(scope="module")
def bare(tiny_mlx: Path) -> tuple[Any, Any]:
    """The same folder in-process, straight through mlx-lm."""
    from mlx_lm import load

    loaded = load(str(tiny_mlx))
    return loaded[0], loaded[1]


def in_process(bare: tuple[Any, Any], ids: list[int], tokens: int, **kwargs: Any) -> str:
    from mlx_lm import generate

    model, tokenizer = bare
    return str(generate(model, tokenizer, prompt=ids, max_tokens=tokens, **kwargs))


async def predict(llm: tuple[Served, Mlx], **fields: Any) -> pb.Reply:
    reply: pb.Reply = await llm[0].client.backend.Predict(pb.PredictOptions(**fields))
    return reply


async def stream(llm: tuple[Served, Mlx], **fields: Any) -> list[pb.Reply]:
    replies: list[pb.Reply] = await llm[0].client.backend.PredictStream(pb.PredictOptions(**fields))
    return replies


async def error_of(call: Any) -> GRPCError:
    with pytest.raises(GRPCError) as err:
        await call
    return err.value


def joined(replies: list[pb.Reply]) -> tuple[str, str, list[pb.ToolCallDelta]]:
    content = "".join(d.content for r in replies for d in r.chat_deltas)
    reasoning = "".join(d.reasoning_content for r in replies for d in r.chat_deltas)
    calls = [c for r in replies for d in r.chat_deltas for c in d.tool_calls]
    return content, reasoning, calls


# -- generation ------------------------------------------------------------------------------------
async def test_greedy_predict_matches_mlx_lm_in_process(
    llm: tuple[Served, Mlx], bare: tuple[Any, Any]
) -> None:
    ids = bare[1].encode(PROMPT)
    reply = await predict(llm, Prompt=PROMPT, Tokens=16)
    assert reply.message.decode() == in_process(bare, ids, 16)
    assert reply.tokens == 16
    assert reply.prompt_tokens == len(ids)
    assert reply.timing_token_generation > 0


async def test_a_stream_arrives_token_by_token_and_joins_to_predicts_text(llm: tuple[Served, Mlx]) -> None:
    fields: dict[str, Any] = {"Prompt": PROMPT, "Tokens": 24, "Temperature": 1.0, "Seed": 5}
    whole = await predict(llm, **fields)
    chunks = await stream(llm, **fields)
    assert len([c for c in chunks if c.message]) > 10  # token by token, not all at the end
    assert b"".join(c.message for c in chunks) == whole.message
    assert chunks[-1].tokens == 24
    assert [c.tokens for c in chunks] == sorted(c.tokens for c in chunks)


async def test_the_same_seed_gives_the_same_sample_and_top_k_1_is_greedy(llm: tuple[Served, Mlx]) -> None:
    hot: dict[str, Any] = {"Prompt": PROMPT, "Tokens": 20, "Temperature": 20.0}
    first = await predict(llm, Seed=7, **hot)
    again = await predict(llm, Seed=7, **hot)
    other = await predict(llm, Seed=8, **hot)
    greedy = await predict(llm, Prompt=PROMPT, Tokens=20)
    assert first.message == again.message
    assert first.message != other.message
    assert first.message != greedy.message  # so hot, it leaves the script
    assert (await predict(llm, Seed=7, TopK=1, **hot)).message == greedy.message
    assert (await predict(llm, Seed=7, TopP=1e-6, **hot)).message == greedy.message
    assert (await predict(llm, Seed=7, MinP=0.999, **hot)).message == greedy.message


async def test_the_repeat_penalty_is_mlx_lms(llm: tuple[Served, Mlx], bare: tuple[Any, Any]) -> None:
    from mlx_lm.sample_utils import make_logits_processors

    # The scripted successor of <|assistant|> is <tool_call>, already in the prompt: penalised away.
    prompt = "<tool_call><|assistant|>"
    plain = await predict(llm, Prompt=prompt, Tokens=3)
    assert plain.message.decode().startswith("<tool_call>")
    penalised = await predict(llm, Prompt=prompt, Tokens=3, Penalty=10.0)
    processors = make_logits_processors(repetition_penalty=10.0, repetition_context_size=64)
    expected = in_process(bare, bare[1].encode(prompt), 3, logits_processors=processors)
    assert penalised.message.decode() == expected
    assert not expected.startswith("<tool_call>")
    presence = await predict(llm, Prompt=prompt, Tokens=3, PresencePenalty=30.0)
    assert not presence.message.decode().startswith("<tool_call>")


async def test_eos_ends_the_output_unless_ignored(llm: tuple[Served, Mlx]) -> None:
    ends = await predict(llm, Prompt="Hi<|assistant|>", Tokens=10)
    assert ends.message.decode() == f"<tool_call>{CALL}</tool_call>"
    assert ends.tokens == 4  # the three pieces and EOS
    ignored = await predict(llm, Prompt="Hi<|assistant|>", Tokens=10, IgnoreEOS=True)
    assert ignored.tokens == 10
    assert ignored.message.decode().startswith(ends.message.decode())


async def test_stop_prompts_end_the_output_before_the_stop_string(llm: tuple[Served, Mlx]) -> None:
    full = (await predict(llm, Prompt=PROMPT, Tokens=30)).message.decode()
    middle = len(full) // 2
    stop = full[middle : middle + 3]
    expected = full[: full.find(stop)]
    cut = await predict(llm, Prompt=PROMPT, Tokens=30, StopPrompts=[stop])
    assert cut.message.decode() == expected
    assert cut.tokens < 30
    streamed = await stream(llm, Prompt=PROMPT, Tokens=30, StopPrompts=[stop])
    assert b"".join(c.message for c in streamed).decode() == expected


# -- chat ------------------------------------------------------------------------------------------
async def test_tool_calls_come_back_in_chat_deltas(llm: tuple[Served, Mlx]) -> None:
    fields: dict[str, Any] = {"UseTokenizerTemplate": True, "Messages": CHAT, "Tools": TOOLS, "Tokens": 10}
    reply = await predict(llm, **fields)
    (delta,) = reply.chat_deltas
    (call,) = delta.tool_calls
    assert (call.index, call.name) == (0, "get_weather")
    assert json.loads(call.arguments) == {"city": "Paris"}
    assert delta.content == ""
    content, reasoning, calls = joined(await stream(llm, **fields))
    assert (content, reasoning) == ("", "")
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris"})]


async def test_without_tools_the_markup_is_content(llm: tuple[Served, Mlx]) -> None:
    reply = await predict(llm, UseTokenizerTemplate=True, Messages=CHAT, Tokens=10)
    (delta,) = reply.chat_deltas
    assert delta.content == f"<tool_call>{CALL}</tool_call>"
    assert not delta.tool_calls


async def test_enable_thinking_reaches_the_template_and_reasoning_is_parsed(llm: tuple[Served, Mlx]) -> None:
    fields: dict[str, Any] = {
        "UseTokenizerTemplate": True,
        "Messages": CHAT,
        "Tokens": 10,
        "Metadata": {"enable_thinking": "true"},
    }
    reply = await predict(llm, **fields)
    assert reply.message.decode() == f"{REASONING}</think>{ANSWER}"
    (delta,) = reply.chat_deltas
    assert (delta.reasoning_content, delta.content) == (REASONING, ANSWER)
    content, reasoning, calls = joined(await stream(llm, **fields))
    assert (reasoning, content, calls) == (REASONING, ANSWER, [])


async def test_tokenize_string_gives_the_tokens_predict_feeds(
    llm: tuple[Served, Mlx], bare: tuple[Any, Any]
) -> None:
    tokens = await llm[0].client.backend.TokenizeString(pb.PredictOptions(Prompt=PROMPT))
    assert list(tokens.tokens) == bare[1].encode(PROMPT)
    assert tokens.length == len(tokens.tokens)
    chat = await llm[0].client.backend.TokenizeString(
        pb.PredictOptions(UseTokenizerTemplate=True, Messages=CHAT)
    )
    reply = await predict(llm, UseTokenizerTemplate=True, Messages=CHAT, Tokens=1)
    assert chat.length == reply.prompt_tokens
    assert list(chat.tokens).count(bare[1].bos_token_id) == 1  # the template's BOS, not a second one


# -- embeddings -------------------------------------------------------------------------------------
async def test_embedding_is_the_mean_of_the_last_hidden_state(
    llm: tuple[Served, Mlx], bare: tuple[Any, Any]
) -> None:
    import mlx.core as mx

    text = "A man is eating food."
    result = await llm[0].client.backend.Embedding(pb.PredictOptions(Embeddings=text))
    ids = bare[1].encode(text)
    expected = mx.mean(bare[0].model(mx.array([ids]))[0], axis=0).tolist()
    assert isinstance(expected, list)
    assert result.dim == len(expected) == 128
    assert result.tokens == len(ids)
    assert list(result.embeddings) == pytest.approx(expected, abs=1e-5)
    other = await llm[0].client.backend.Embedding(
        pb.PredictOptions(Embeddings="The girl is carrying a baby.")
    )
    assert list(other.embeddings) != list(result.embeddings)


# -- cancellation and the event loop ------------------------------------------------------------------
async def test_a_cancelled_stream_stops_generating(llm: tuple[Served, Mlx]) -> None:
    served, backend = llm
    engine = backend.engine()
    before = engine.generated
    received = 0
    async with served.client.backend.PredictStream.open() as call:
        await call.send_message(pb.PredictOptions(Prompt=PROMPT, Tokens=4000), end=True)
        async for _ in call:
            received += 1
            if received == 3:
                break
        await call.cancel()
    # One generation at a time: this one is served only once the cancelled one has let go.
    started = time.monotonic()
    assert (await predict(llm, Prompt=PROMPT, Tokens=2)).tokens == 2
    assert time.monotonic() - started < 2.0
    by_the_stream = engine.generated - before - 2
    assert 3 <= by_the_stream < 100  # 4000 asked: it stopped within a few tokens of the cancel
    assert served.runtime.in_flight == 0


async def test_health_answers_while_a_generation_runs(llm: tuple[Served, Mlx]) -> None:
    served, backend = llm
    engine = backend.engine()
    async with served.client.backend.PredictStream.open() as call:
        await call.send_message(pb.PredictOptions(Prompt=PROMPT, Tokens=4000), end=True)
        await call.recv_message()
        at = engine.generated
        started = time.monotonic()
        assert await served.client.healthy(timeout=1.0)
        assert time.monotonic() - started < 0.5
        await call.recv_message()
        assert engine.generated > at  # still generating meanwhile
        await call.cancel()


# -- bad input ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"Prompt": ""}, "prompt is empty"),
        ({"Prompt": "Hi", "Tokens": -1}, "Tokens is -1"),
        ({"Prompt": "Hi", "Temperature": float("nan")}, "Temperature is nan"),
        ({"Prompt": "Hi", "TopP": 1.5}, "TopP is 1.5"),
        ({"Prompt": "Hi", "Penalty": 1e30}, "Penalty is 1e+30"),
        ({"UseTokenizerTemplate": True, "Messages": [pb.Message(role="wizard", content="hi")]}, "wizard"),
        ({"UseTokenizerTemplate": True, "Messages": CHAT, "Tools": "{not json"}, "Tools is not valid JSON"),
        ({"Prompt": "the quick brown fox " * 2000}, "context is 4096 tokens"),
    ],
)
async def test_bad_requests_are_invalid_argument_naming_the_problem(
    llm: tuple[Served, Mlx], fields: dict[str, Any], named: str
) -> None:
    for rpc in (predict, stream):
        err = await error_of(rpc(llm, **fields))
        assert err.status == Status.INVALID_ARGUMENT
        assert named in (err.message or "")
    assert (await predict(llm, Prompt="Hi", Tokens=2)).tokens == 2  # still serving


async def test_an_empty_embedding_text_is_invalid_argument(llm: tuple[Served, Mlx]) -> None:
    err = await error_of(llm[0].client.backend.Embedding(pb.PredictOptions()))
    assert err.status == Status.INVALID_ARGUMENT
    assert "empty" in (err.message or "")


async def test_a_missing_model_folder_is_refused_and_the_model_keeps_serving(
    llm: tuple[Served, Mlx], tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere"
    result = await llm[0].client.backend.LoadModel(pb.ModelOptions(Model=str(missing)))
    assert not result.success
    assert "does not exist" in result.message
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "readme.txt").write_text("no model here")
    result = await llm[0].client.backend.LoadModel(pb.ModelOptions(Model=str(notes)))
    assert not result.success
    assert "config.json" in result.message
    assert (await predict(llm, Prompt="Hi", Tokens=2)).tokens == 2


async def test_load_options_set_the_default_tokens_and_the_chat_template(
    llm: tuple[Served, Mlx], tiny_mlx: Path, bare: tuple[Any, Any]
) -> None:
    template = "{{ bos_token }}{% for m in messages %}[{{ m['content'] }}]{% endfor %}"
    backend = llm[0].client.backend
    options = ["max_tokens:7", f"chat_template:{template}"]
    try:
        loaded = await backend.LoadModel(pb.ModelOptions(Model=str(tiny_mlx), Options=options))
        assert loaded.success, loaded.message
        assert (await predict(llm, Prompt=PROMPT)).tokens == 7  # Tokens 0: the option's
        chat = await backend.TokenizeString(pb.PredictOptions(UseTokenizerTemplate=True, Messages=CHAT))
        assert list(chat.tokens) == bare[1].encode(f"[{CHAT[0].content}]")
        unknown = await backend.LoadModel(pb.ModelOptions(Model=str(tiny_mlx), Options=["max_token:7"]))
        assert not unknown.success
        assert "unknown option 'max_token'" in unknown.message
    finally:
        assert (await backend.LoadModel(pb.ModelOptions(Model=str(tiny_mlx)))).success
