"""mlx-vlm over real gRPC on a tiny random LLaVA built in the test session (tests/mlx_vlm/models.py).

Expected outputs come from the same folder run in-process: the picture through the Hugging Face image
processor, the ids through the tokenizer, generation through mlx-vlm's own `generate`.
"""

from __future__ import annotations

import base64
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
from localfleet_mlx_vlm.servicer import MlxVlm
from tests.mlx_vlm.models import IMAGE_TOKENS, png

pytestmark = pytest.mark.asyncio(loop_scope="module")

PROMPT = "<image>Describe the image."
CHAT = [pb.Message(role="user", content="What is in the picture?")]
TOOLS = json.dumps([{"type": "function", "function": {"name": "look", "parameters": {"type": "object"}}}])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def vlm(tiny_llava: Path) -> AsyncIterator[tuple[Served, MlxVlm]]:
    backend = MlxVlm()
    async with serving(backend) as served:
        result = await served.client.backend.LoadModel(pb.ModelOptions(Model=str(tiny_llava)))
        assert result.success, result.message
        assert result.message.startswith("llava vision-language model")
        yield served, backend


@pytest.fixture(scope="module")
def bare(tiny_llava: Path) -> tuple[Any, Any]:
    """The same folder in-process, straight through mlx-vlm."""
    from mlx_vlm.utils import load

    loaded = load(str(tiny_llava))
    return loaded[0], loaded[1]


def in_process(bare: tuple[Any, Any], text: str, image: bytes | None, tokens: int) -> tuple[str, int]:
    """Greedy text and prompt tokens: one image's pixels from the image processor itself, its token
    expanded to the image's patches, generation by mlx-vlm."""
    import io

    import mlx.core as mx
    from mlx_vlm.generate import generate
    from PIL import Image

    model, processor = bare
    pixels = None
    if image is not None:
        picture = Image.open(io.BytesIO(image)).convert("RGB")
        pixels = mx.array(processor.image_processor(picture, return_tensors="np")["pixel_values"])
        text = text.replace("<image>", "<image>" * IMAGE_TOKENS)
    ids = mx.array([processor.tokenizer.encode(text)])
    result = generate(
        model,
        processor,
        "",
        input_ids=ids,
        pixel_values=pixels,
        mask=mx.ones_like(ids),
        max_tokens=tokens,
        temperature=0.0,
        verbose=False,
    )
    # Its own detokenizer treats split characters its own way: the tokens decoded whole compare.
    return str(processor.tokenizer.decode(result.token_ids)), int(ids.size)


async def predict(vlm: tuple[Served, MlxVlm], **fields: Any) -> pb.Reply:
    reply: pb.Reply = await vlm[0].client.backend.Predict(pb.PredictOptions(**fields))
    return reply


async def stream(vlm: tuple[Served, MlxVlm], **fields: Any) -> list[pb.Reply]:
    replies: list[pb.Reply] = await vlm[0].client.backend.PredictStream(pb.PredictOptions(**fields))
    return replies


async def error_of(call: Any) -> GRPCError:
    with pytest.raises(GRPCError) as err:
        await call
    return err.value


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- images ----------------------------------------------------------------------------------------
async def test_greedy_predict_with_an_image_matches_mlx_vlm_in_process(
    vlm: tuple[Served, MlxVlm], bare: tuple[Any, Any]
) -> None:
    expected, prompt_tokens = in_process(bare, PROMPT, png(0), 12)
    reply = await predict(vlm, Prompt=PROMPT, Images=[b64(png(0))], Tokens=12, IgnoreEOS=True)
    assert reply.message.decode() == expected
    assert reply.prompt_tokens == prompt_tokens  # the image token became the picture's patches
    assert reply.tokens == 12


async def test_the_picture_changes_the_answer(vlm: tuple[Served, MlxVlm]) -> None:
    fields: dict[str, Any] = {"Prompt": PROMPT, "Tokens": 12, "IgnoreEOS": True}
    first = await predict(vlm, Images=[b64(png(0))], **fields)
    other = await predict(vlm, Images=[b64(png(1))], **fields)
    again = await predict(vlm, Images=[b64(png(0))], **fields)
    assert first.message != other.message
    assert first.message == again.message


async def test_an_image_arrives_as_base64_a_data_uri_or_a_path(
    vlm: tuple[Served, MlxVlm], tmp_path: Path
) -> None:
    picture = tmp_path / "picture.png"
    picture.write_bytes(png(2))
    fields: dict[str, Any] = {"Prompt": PROMPT, "Tokens": 8, "IgnoreEOS": True}
    raw = await predict(vlm, Images=[b64(png(2))], **fields)
    uri = await predict(vlm, Images=["data:image/png;base64," + b64(png(2))], **fields)
    path = await predict(vlm, Images=[str(picture)], **fields)
    assert raw.message == uri.message == path.message


async def test_a_prompt_without_an_image_token_gets_one_in_front(vlm: tuple[Served, MlxVlm]) -> None:
    fields: dict[str, Any] = {"Images": [b64(png(3))], "Tokens": 8, "IgnoreEOS": True}
    bare_text = await predict(vlm, Prompt="Describe the image.", **fields)
    marked = await predict(vlm, Prompt="<image>Describe the image.", **fields)
    assert bare_text.message == marked.message
    assert bare_text.prompt_tokens == marked.prompt_tokens


async def test_text_alone_is_served_too(vlm: tuple[Served, MlxVlm], bare: tuple[Any, Any]) -> None:
    expected, prompt_tokens = in_process(bare, "Hello, how are you?", None, 10)
    reply = await predict(vlm, Prompt="Hello, how are you?", Tokens=10, IgnoreEOS=True)
    assert reply.message.decode() == expected
    assert reply.prompt_tokens == prompt_tokens


# -- chat ------------------------------------------------------------------------------------------
async def test_chat_messages_take_the_images_through_the_template(vlm: tuple[Served, MlxVlm]) -> None:
    fields: dict[str, Any] = {"UseTokenizerTemplate": True, "Messages": CHAT, "Tokens": 8, "IgnoreEOS": True}
    with_image = await predict(vlm, Images=[b64(png(0))], **fields)
    without = await predict(vlm, **fields)
    assert with_image.prompt_tokens == without.prompt_tokens + IMAGE_TOKENS
    (delta,) = with_image.chat_deltas  # the chat output parser ran: all of it is content here
    assert delta.content == with_image.message.decode()
    templated = await predict(
        vlm,
        Prompt="<s><|user|>What is in the picture?<image>\n<|assistant|>",
        Images=[b64(png(0))],
        Tokens=8,
        IgnoreEOS=True,
    )
    assert templated.message == with_image.message


async def test_tools_reach_the_template(vlm: tuple[Served, MlxVlm]) -> None:
    plain = await predict(vlm, UseTokenizerTemplate=True, Messages=CHAT, Tokens=1)
    tooled = await predict(vlm, UseTokenizerTemplate=True, Messages=CHAT, Tools=TOOLS, Tokens=1)
    assert tooled.prompt_tokens > plain.prompt_tokens + 5


async def test_tokenize_string_counts_the_images_patches(vlm: tuple[Served, MlxVlm]) -> None:
    request = pb.PredictOptions(Prompt=PROMPT, Images=[b64(png(0))])
    tokens = await vlm[0].client.backend.TokenizeString(request)
    reply = await predict(vlm, Prompt=PROMPT, Images=[b64(png(0))], Tokens=1)
    assert tokens.length == reply.prompt_tokens == len(tokens.tokens)
    text = await vlm[0].client.backend.TokenizeString(pb.PredictOptions(Prompt="Describe the image."))
    assert tokens.length == text.length + IMAGE_TOKENS


# -- sampling ----------------------------------------------------------------------------------------
async def test_a_stream_joins_to_predicts_text_and_a_seed_repeats(vlm: tuple[Served, MlxVlm]) -> None:
    fields: dict[str, Any] = {
        "Prompt": PROMPT,
        "Images": [b64(png(4))],
        "Tokens": 16,
        "Temperature": 1.0,
        "IgnoreEOS": True,
    }
    whole = await predict(vlm, Seed=5, **fields)
    chunks = await stream(vlm, Seed=5, **fields)
    assert len([c for c in chunks if c.message]) >= 5  # token by token (split characters wait)
    assert b"".join(c.message for c in chunks) == whole.message
    assert chunks[-1].tokens == 16
    assert (await predict(vlm, Seed=6, **fields)).message != whole.message


async def test_stop_prompts_end_the_output_before_the_stop_string(vlm: tuple[Served, MlxVlm]) -> None:
    fields: dict[str, Any] = {"Prompt": "Hello, how are you?", "Tokens": 30, "IgnoreEOS": True}
    full = (await predict(vlm, **fields)).message.decode()
    middle = len(full) // 2
    stop = full[middle : middle + 3]
    expected = full[: full.find(stop)]
    cut = await predict(vlm, StopPrompts=[stop], **fields)
    assert cut.message.decode() == expected
    assert cut.tokens < 30
    streamed = await stream(vlm, StopPrompts=[stop], **fields)
    assert b"".join(c.message for c in streamed).decode() == expected


# -- cancellation and the event loop ------------------------------------------------------------------
async def test_a_cancelled_stream_stops_generating(vlm: tuple[Served, MlxVlm]) -> None:
    served, backend = vlm
    engine = backend.engine()
    before = engine.generated
    received = 0
    request = pb.PredictOptions(Prompt=PROMPT, Images=[b64(png(0))], Tokens=2000, IgnoreEOS=True)
    async with served.client.backend.PredictStream.open() as call:
        await call.send_message(request, end=True)
        async for _ in call:
            received += 1
            if received == 3:
                break
        await call.cancel()
    # One generation at a time: this one is served only once the cancelled one has let go.
    started = time.monotonic()
    assert (await predict(vlm, Prompt="Hi", Tokens=2, IgnoreEOS=True)).tokens == 2
    assert time.monotonic() - started < 2.0
    by_the_stream = engine.generated - before - 2
    assert 3 <= by_the_stream < 100  # 2000 asked: it stopped within a few tokens of the cancel
    assert served.runtime.in_flight == 0


async def test_health_answers_while_a_generation_runs(vlm: tuple[Served, MlxVlm]) -> None:
    served, backend = vlm
    engine = backend.engine()
    request = pb.PredictOptions(Prompt=PROMPT, Images=[b64(png(0))], Tokens=2000, IgnoreEOS=True)
    async with served.client.backend.PredictStream.open() as call:
        await call.send_message(request, end=True)
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
        ({"Prompt": PROMPT, "Images": ["%%% not base64 %%%"]}, "Images[0] is neither base64"),
        ({"Prompt": PROMPT, "Images": [b64(b"plain text, no picture")]}, "Images[0] is not an image"),
        ({"Prompt": PROMPT, "Images": [""]}, "Images[0] is empty"),
        ({"Prompt": "<image><image>Two?", "Images": [b64(png(0))]}, "2 image tokens"),
        ({"Prompt": "Hi", "Tokens": -1}, "Tokens is -1"),
        ({"Prompt": "Hi", "TopP": 1.5}, "TopP is 1.5"),
        ({"UseTokenizerTemplate": True, "Messages": [pb.Message(role="wizard", content="hi")]}, "wizard"),
        ({"Prompt": "the quick brown fox " * 1000}, "context is 2048 tokens"),
    ],
)
async def test_bad_requests_are_invalid_argument_naming_the_problem(
    vlm: tuple[Served, MlxVlm], fields: dict[str, Any], named: str
) -> None:
    for rpc in (predict, stream):
        err = await error_of(rpc(vlm, **fields))
        assert err.status == Status.INVALID_ARGUMENT
        assert named in (err.message or "")
    assert (await predict(vlm, Prompt="Hi", Tokens=2, IgnoreEOS=True)).tokens == 2  # still serving


async def test_a_missing_model_folder_is_refused_and_the_model_keeps_serving(
    vlm: tuple[Served, MlxVlm], tmp_path: Path
) -> None:
    result = await vlm[0].client.backend.LoadModel(pb.ModelOptions(Model=str(tmp_path / "nowhere")))
    assert not result.success
    assert "does not exist" in result.message
    assert (await predict(vlm, Prompt="Hi", Tokens=2, IgnoreEOS=True)).tokens == 2
