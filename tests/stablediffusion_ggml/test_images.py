"""stablediffusion-ggml over real gRPC on a full-size random SD 1.x (tests/stablediffusion_ggml/models.py).

The expected pixels come from the same model run by stable-diffusion-cpp-python in this process.
"""

from __future__ import annotations

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
from localfleet_stablediffusion_ggml.servicer import StableDiffusionGgml
from tests.steps import watching_steps

pytestmark = pytest.mark.asyncio(loop_scope="module")

PROMPT = "a red cat"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def painter(sd1: Path) -> AsyncIterator[Served]:
    async with serving(StableDiffusionGgml()) as served:
        # CFG scale 1 skips the unconditioned pass: half the work per step, the same code path.
        loaded = await served.client.backend.LoadModel(
            pb.ModelOptions(Model=str(sd1), CFGScale=1, Threads=2, Options=["max_steps:20"])
        )
        assert loaded.success, loaded.message
        assert loaded.message.endswith("on stable-diffusion.cpp, 2 threads")
        yield served


async def generate(served: Served, **fields: Any) -> pb.Result:
    fields.setdefault("positive_prompt", PROMPT)
    fields.setdefault("width", 64)
    fields.setdefault("height", 64)
    fields.setdefault("step", 1)
    result: pb.Result = await served.client.backend.GenerateImage(pb.GenerateImageRequest(**fields))
    return result


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


async def test_an_image_is_the_engines_own_and_a_seed_repeats_it(
    painter: Served, sd1: Path, tmp_path: Path
) -> None:
    from stable_diffusion_cpp import StableDiffusion

    first, again = tmp_path / "first.png", tmp_path / "again.png"
    result = await generate(painter, dst=str(first), seed=5, step=2)
    assert result.message.startswith("64x64 PNG, seed 5, 2 steps")
    await generate(painter, dst=str(again), seed=5, step=2)
    assert first.read_bytes() == again.read_bytes()
    bare = StableDiffusion(model_path=str(sd1), n_threads=2, verbose=False)
    try:
        made = bare.generate_image(
            prompt=PROMPT, width=64, height=64, sample_steps=2, cfg_scale=1.0, seed=5, progress_callback=print
        )[0]
    finally:
        from localfleet_stablediffusion_ggml import engine

        engine._install_quiet()  # the binding leaves its callback behind (see engine's docstring)
    assert np.array_equal(pixels(first), np.asarray(made.convert("RGB")))
    await generate(painter, dst=str(tmp_path / "other.png"), seed=6, step=2)
    assert not np.array_equal(pixels(tmp_path / "other.png"), pixels(first))


async def test_src_makes_image_to_image(painter: Served, tmp_path: Path) -> None:
    source = tmp_path / "source.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(source)
    await generate(painter, dst=str(tmp_path / "plain.png"), seed=2, step=2)
    await generate(painter, dst=str(tmp_path / "edited.png"), seed=2, step=2, src=str(source))
    assert not np.array_equal(pixels(tmp_path / "plain.png"), pixels(tmp_path / "edited.png"))


# -- long work -----------------------------------------------------------------------------------------
async def test_steps_are_counted_health_answers_and_a_cancelled_image_is_not_written(
    painter: Served, tmp_path: Path
) -> None:
    with watching_steps() as step_log:
        metric = ("localfleet_steps_total", {"rpc": "GenerateImage"})
        before = painter.runtime.metrics.registry.get_sample_value(*metric) or 0.0
        await generate(painter, dst=str(tmp_path / "three.png"), step=3)
        assert painter.runtime.metrics.registry.get_sample_value(*metric) - before == 3
        assert step_log.steps[-3:] == [f"GenerateImage: step {n}/3" for n in (1, 2, 3)]

        step_log.seen.clear()
        dst = tmp_path / "cancelled.png"
        request = pb.GenerateImageRequest(positive_prompt=PROMPT, width=64, height=64, step=12, dst=str(dst))
        async with painter.client.backend.GenerateImage.open() as call:
            await call.send_message(request, end=True)
            await step_log.seen.wait()
            assert await painter.client.healthy(timeout=1.0)
            assert not step_log.steps[-1].endswith("12/12")  # Health answered mid-run
            await call.cancel()
        # One run at a time: this one starts once the cancelled run has ended (stable-diffusion.cpp cannot
        # stop one midway) and its image has been dropped.
        assert (await generate(painter, dst=str(tmp_path / "next.png"))).success
        assert not dst.exists()
        assert listing(tmp_path) == ["next.png", "three.png"]


# -- bad input -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fields", "status", "named"),
    [
        ({"width": 60}, Status.INVALID_ARGUMENT, "width 60 is not a multiple of 8"),
        ({"height": 0}, Status.INVALID_ARGUMENT, "height must be a positive number"),
        ({"width": 4096, "height": 2048}, Status.INVALID_ARGUMENT, "over the 4,194,304 allowed"),
        ({"step": 0}, Status.INVALID_ARGUMENT, "step must be 1 to 20"),
        ({"step": 21}, Status.INVALID_ARGUMENT, "step must be 1 to 20"),
        ({"positive_prompt": ""}, Status.INVALID_ARGUMENT, "positive_prompt is empty"),
        ({"EnableParameters": "width"}, Status.INVALID_ARGUMENT, "EnableParameters is a diffusers setting"),
        ({"src": "{tmp}/notes.txt"}, Status.INVALID_ARGUMENT, "is not an image"),
        ({"src": "{tmp}/none.png"}, Status.NOT_FOUND, "src"),
        ({"dst": "{tmp}/out.webp"}, Status.INVALID_ARGUMENT, "does not end in .png"),
        ({"dst": "{tmp}/missing/out.png"}, Status.NOT_FOUND, "does not exist here"),
    ],
)
async def test_bad_input_is_refused_by_name_and_nothing_is_written(
    painter: Served, tmp_path: Path, fields: dict[str, Any], status: Status, named: str
) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    fields = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in fields.items()}
    fields.setdefault("dst", str(tmp_path / "out.png"))
    with pytest.raises(GRPCError) as err:
        await generate(painter, **fields)
    assert err.value.status == status, err.value.message
    assert named in str(err.value.message)
    assert listing(tmp_path) == ["notes.txt"]


async def test_an_image_model_refuses_video(painter: Served, tmp_path: Path) -> None:
    request = pb.GenerateVideoRequest(
        prompt="a cat", width=64, height=64, step=1, num_frames=2, dst=str(tmp_path / "v.mp4")
    )
    with pytest.raises(GRPCError) as err:
        await painter.client.backend.GenerateVideo(request)
    assert err.value.status == Status.INVALID_ARGUMENT
    assert "loaded as an image model; GenerateVideo needs a video model" in str(err.value.message)
    assert listing(tmp_path) == []
    assert (await generate(painter, dst=str(tmp_path / "after.png"))).success


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["sampler:warp"], "sampler 'warp' is unknown"),
        (["scheduler:sideways"], "scheduler 'sideways' is unknown"),
        (["vae_path:no-such-vae.safetensors"], "vae_path file not found"),
        (["threads:-1"], "threads"),
    ],
)
async def test_a_load_it_cannot_do_is_refused_by_name(sd1: Path, options: list[str], named: str) -> None:
    async with serving(StableDiffusionGgml()) as served:
        result = await served.client.backend.LoadModel(pb.ModelOptions(Model=str(sd1), Options=options))
        assert not result.success
        assert named in result.message


async def test_a_named_sampler_changes_the_image(sd1: Path, painter: Served, tmp_path: Path) -> None:
    await generate(painter, dst=str(tmp_path / "default.png"), seed=3, step=2)
    async with serving(StableDiffusionGgml()) as served:
        loaded = await served.client.backend.LoadModel(
            pb.ModelOptions(
                Model=str(sd1), CFGScale=1, Threads=2, Options=["sampler:euler_a", "scheduler:karras"]
            )
        )
        assert loaded.success, loaded.message
        await generate(served, dst=str(tmp_path / "euler_a.png"), seed=3, step=2)
    assert not np.array_equal(pixels(tmp_path / "default.png"), pixels(tmp_path / "euler_a.png"))
