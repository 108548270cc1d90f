"""diffusers' GenerateImage over real gRPC on a tiny random Stable Diffusion built in the test session.

The expected pixels are not written down: they come from the same folder run by diffusers in-process
with the same seed, steps and size.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from PIL import Image

from localfleet.proto import backend_pb2 as pb
from localfleet.testing import Served, serving
from localfleet_diffusers.servicer import Diffusers
from tests.steps import watching_steps

pytestmark = pytest.mark.asyncio(loop_scope="module")

PROMPT = "a red cat on a blue sofa"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def painter(tiny_sd: Path) -> AsyncIterator[Served]:
    async with serving(Diffusers()) as served:
        result = await served.client.backend.LoadModel(
            pb.ModelOptions(Model=str(tiny_sd), Options=["max_steps:400"])
        )
        assert result.success, result.message
        assert result.message.startswith("StableDiffusionPipeline (float32) on cpu")
        yield served


async def generate(served: Served, **fields: Any) -> pb.Result:
    fields.setdefault("positive_prompt", PROMPT)
    fields.setdefault("width", 64)
    fields.setdefault("height", 64)
    fields.setdefault("step", 2)
    result: pb.Result = await served.client.backend.GenerateImage(pb.GenerateImageRequest(**fields))
    return result


async def error_of(served: Served, **fields: Any) -> GRPCError:
    with pytest.raises(GRPCError) as err:
        await generate(served, **fields)
    return err.value


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def bare(folder: Path, seed: int, **kwargs: Any) -> np.ndarray:
    """The same pipeline in-process, straight through diffusers."""
    import torch
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(folder), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(generator=torch.Generator("cpu").manual_seed(seed), output_type="pil", **kwargs).images[0]
    return np.asarray(image.convert("RGB"))


# -- what comes out --------------------------------------------------------------------------------------
async def test_an_image_is_the_pipelines_own_and_a_seed_repeats_it_bit_for_bit(
    painter: Served, tiny_sd: Path, tmp_path: Path
) -> None:
    first, again = tmp_path / "first.png", tmp_path / "again.png"
    result = await generate(painter, dst=str(first), seed=42, negative_prompt="blurry")
    assert result.success
    assert result.message.startswith("64x64 PNG, seed 42, 2 steps")
    await generate(painter, dst=str(again), seed=42, negative_prompt="blurry")
    assert first.read_bytes() == again.read_bytes()
    expected = bare(
        tiny_sd, 42, prompt=PROMPT, negative_prompt="blurry", width=64, height=64, num_inference_steps=2
    )
    assert np.array_equal(pixels(first), expected)
    other = tmp_path / "other.png"
    await generate(painter, dst=str(other), seed=43, negative_prompt="blurry")
    assert not np.array_equal(pixels(other), expected)


async def test_seed_zero_draws_a_seed_and_says_which(painter: Served, tmp_path: Path) -> None:
    drawn = await generate(painter, dst=str(tmp_path / "drawn.png"))
    seed = int(drawn.message.split("seed ")[1].split(",")[0])
    assert 0 <= seed < 2**31
    await generate(painter, dst=str(tmp_path / "again.png"), seed=seed)
    assert (tmp_path / "drawn.png").read_bytes() == (tmp_path / "again.png").read_bytes()


async def test_src_makes_image_to_image(painter: Served, tiny_sd: Path, tmp_path: Path) -> None:
    source = tmp_path / "source.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(source)
    plain, edited = tmp_path / "plain.png", tmp_path / "edited.png"
    await generate(painter, dst=str(plain), seed=5, step=4)
    result = await generate(painter, dst=str(edited), seed=5, step=4, src=str(source))
    assert result.success
    assert pixels(edited).shape == (64, 64, 3)
    assert not np.array_equal(pixels(edited), pixels(plain))


async def test_enable_parameters_chooses_what_reaches_the_pipeline(painter: Served, tmp_path: Path) -> None:
    # Without width and height the pipeline makes its own default size: 16 latents x 2 = 32 pixels.
    dst = tmp_path / "default-size.png"
    result = await generate(painter, dst=str(dst), seed=1, EnableParameters="num_inference_steps")
    assert result.message.startswith("32x32 PNG")
    assert pixels(dst).shape == (32, 32, 3)
    err = await error_of(painter, dst=str(tmp_path / "x.png"), EnableParameters="width,sharpness")
    assert err.status == Status.INVALID_ARGUMENT
    assert "EnableParameters names 'sharpness'" in str(err.message)


async def test_clip_skip_reaches_the_text_encoder(painter: Served, tmp_path: Path) -> None:
    plain, skipped = tmp_path / "plain.png", tmp_path / "skipped.png"
    await generate(painter, dst=str(plain), seed=9)
    await generate(painter, dst=str(skipped), seed=9, CLIPSkip=1)
    assert not np.array_equal(pixels(plain), pixels(skipped))


# -- long work -----------------------------------------------------------------------------------------
def steps_metric(served: Served) -> float:
    value = served.runtime.metrics.registry.get_sample_value(
        "localfleet_steps_total", {"rpc": "GenerateImage"}
    )
    return value or 0.0


async def test_steps_go_to_the_log_and_the_metric(painter: Served, tmp_path: Path) -> None:
    with watching_steps() as step_log:
        before = steps_metric(painter)
        await generate(painter, dst=str(tmp_path / "three.png"), step=3)
        assert steps_metric(painter) - before == 3
        assert step_log.steps[-3:] == [f"GenerateImage: step {n}/3" for n in (1, 2, 3)]


async def test_health_answers_and_a_cancel_stops_at_the_next_step(painter: Served, tmp_path: Path) -> None:
    with watching_steps() as step_log:
        dst = tmp_path / "cancelled.png"
        request = pb.GenerateImageRequest(positive_prompt=PROMPT, width=64, height=64, step=400, dst=str(dst))
        async with painter.client.backend.GenerateImage.open() as call:
            await call.send_message(request, end=True)
            await step_log.seen.wait()  # the pipeline is denoising
            assert await painter.client.healthy(timeout=1.0)
            assert len(step_log.steps) < 400  # Health answered mid-generation
            await call.cancel()
        # One call at a time: the next is served only once the cancelled one has let go of the pipeline.
        assert (await generate(painter, dst=str(tmp_path / "next.png"), step=2)).success
        cancelled = [s for s in step_log.steps if s.endswith("/400")]
        assert 1 <= len(cancelled) < 400
        assert not dst.exists()
        assert listing(tmp_path) == ["next.png"]  # no partial file left behind
        assert painter.runtime.in_flight == 0


# -- bad input -------------------------------------------------------------------------------------------
def _truncated(folder: Path) -> Path:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(buffer, format="PNG")
    path = folder / "truncated.png"
    path.write_bytes(buffer.getvalue()[:-40])
    return path


@pytest.mark.parametrize(
    ("fields", "status", "named"),
    [
        ({"width": 0}, Status.INVALID_ARGUMENT, "width must be a positive number"),
        ({"height": -8}, Status.INVALID_ARGUMENT, "height must be a positive number"),
        ({"width": 65}, Status.INVALID_ARGUMENT, "width 65 is not a multiple of 2"),
        ({"width": 16384}, Status.INVALID_ARGUMENT, "width 16384 is over 8192"),
        ({"width": 4096, "height": 4096}, Status.INVALID_ARGUMENT, "over the 4,194,304 allowed"),
        ({"step": 0}, Status.INVALID_ARGUMENT, "step must be 1 to 400"),
        ({"step": 401}, Status.INVALID_ARGUMENT, "step must be 1 to 400"),
        ({"positive_prompt": " "}, Status.INVALID_ARGUMENT, "positive_prompt is empty"),
        ({"src": "{tmp}/missing.png"}, Status.NOT_FOUND, "src"),
        ({"src": "{tmp}/notes.txt"}, Status.INVALID_ARGUMENT, "is not an image"),
        ({"src": "{truncated}"}, Status.INVALID_ARGUMENT, "is it truncated?"),
        ({"ref_images": ["{tmp}/notes.txt"]}, Status.INVALID_ARGUMENT, "ref_images: StableDiffusionPipeline"),
        ({"dst": "{tmp}/no-folder/out.png"}, Status.NOT_FOUND, "does not exist here"),
        ({"dst": "{tmp}/out.jpg"}, Status.INVALID_ARGUMENT, "does not end in .png"),
        ({"dst": ""}, Status.INVALID_ARGUMENT, "dst is empty"),
    ],
)
async def test_bad_input_is_refused_by_name_and_nothing_is_written(
    painter: Served, tmp_path: Path, fields: dict[str, Any], status: Status, named: str
) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    truncated = _truncated(tmp_path)
    shown = {"tmp": str(tmp_path), "truncated": str(truncated)}
    fields = {
        k: [v.format(**shown) for v in value]
        if isinstance(value, list)
        else value.format(**shown)
        if isinstance(value, str)
        else value
        for k, value in fields.items()
    }
    fields.setdefault("dst", str(tmp_path / "out.png"))
    before = listing(tmp_path)
    err = await error_of(painter, **fields)
    assert err.status == status, err.message
    assert named in str(err.message)
    assert listing(tmp_path) == before
    assert (await generate(painter, dst=str(tmp_path / "after.png"))).success  # still serving


async def test_dst_outside_the_path_roots_is_refused(tiny_sd: Path, tmp_path: Path) -> None:
    allowed = tmp_path / "shared"
    allowed.mkdir()
    roots = {"path_roots": [str(allowed)], "model_path": str(tiny_sd.parent)}
    async with serving(Diffusers(), **roots) as served:
        assert (await served.client.backend.LoadModel(pb.ModelOptions(Model=str(tiny_sd)))).success
        err = await error_of(served, dst=str(tmp_path / "escape.png"))
        assert err.status == Status.INVALID_ARGUMENT
        assert "outside the folders this backend may use" in str(err.message)
        assert not (tmp_path / "escape.png").exists()
        assert (await generate(served, dst=str(allowed / "ok.png"))).success


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"SchedulerType": "warp_drive"}, "SchedulerType 'warp_drive' is unknown"),
        ({"PipelineType": "not a pipeline"}, "not a diffusers pipeline name"),
        ({"Options": ["cpu_offload:model"]}, "cpu_offload"),
        ({"Options": ["max_steps:0"]}, "max_steps"),
        ({"LoraAdapter": "missing-lora.safetensors"}, "LoraAdapter file not found"),
        ({"DType": "int3"}, "DType 'int3'"),
    ],
)
async def test_a_load_it_cannot_do_is_refused_by_name(
    tiny_sd: Path, options: dict[str, Any], named: str
) -> None:
    async with serving(Diffusers()) as served:
        result = await served.client.backend.LoadModel(pb.ModelOptions(Model=str(tiny_sd), **options))
        assert not result.success
        assert named in result.message


async def test_a_scheduler_by_name_changes_the_image(tiny_sd: Path, tmp_path: Path) -> None:
    async with serving(Diffusers()) as served:
        loaded = await served.client.backend.LoadModel(
            pb.ModelOptions(Model=str(tiny_sd), SchedulerType="euler_a")
        )
        assert loaded.success, loaded.message
        await generate(served, dst=str(tmp_path / "euler.png"), seed=3)
    expected = bare(tiny_sd, 3, prompt=PROMPT, width=64, height=64, num_inference_steps=2)
    assert not np.array_equal(pixels(tmp_path / "euler.png"), expected)  # DDIM's image, not this one


async def test_a_lora_adapter_applies_at_its_scale(tiny_sd: Path, tiny_lora: Path, tmp_path: Path) -> None:
    import torch
    from diffusers import DiffusionPipeline

    async with serving(Diffusers()) as served:
        loaded = await served.client.backend.LoadModel(
            pb.ModelOptions(
                Model=str(tiny_sd), ModelPath=str(tiny_lora.parent), LoraAdapter=tiny_lora.name, LoraScale=0.7
            )
        )
        assert loaded.success, loaded.message
        assert loaded.message.endswith("1 LoRA adapter(s)")
        await generate(served, dst=str(tmp_path / "lora.png"), seed=4)
    pipe = DiffusionPipeline.from_pretrained(str(tiny_sd), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(tiny_lora), adapter_name="mine")
    pipe.set_adapters(["mine"], adapter_weights=[0.7])
    made = pipe(
        prompt=PROMPT,
        width=64,
        height=64,
        num_inference_steps=2,
        generator=torch.Generator("cpu").manual_seed(4),
        output_type="pil",
    ).images[0]
    assert np.array_equal(pixels(tmp_path / "lora.png"), np.asarray(made.convert("RGB")))
    plain = bare(tiny_sd, 4, prompt=PROMPT, width=64, height=64, num_inference_steps=2)
    assert not np.array_equal(pixels(tmp_path / "lora.png"), plain)
