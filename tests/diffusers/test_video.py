"""diffusers' GenerateVideo (tiny random AnimateDiff) and UpscaleImage (tiny random SD upscaler) over real
gRPC. The frames are compared with the same pipeline run in-process, decoded back from the MP4."""

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
from localfleet_diffusers.servicer import Diffusers

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def animator(tiny_animatediff: Path) -> AsyncIterator[Served]:
    async with serving(Diffusers()) as served:
        result = await served.client.backend.LoadModel(
            pb.ModelOptions(Model=str(tiny_animatediff), Options=["max_frames:12", "frames:10"])
        )
        assert result.success, result.message
        assert result.message.startswith("AnimateDiffPipeline")
        yield served


async def video(served: Served, **fields: Any) -> pb.Result:
    fields.setdefault("prompt", "a cat walking")
    fields.setdefault("width", 64)
    fields.setdefault("height", 64)
    fields.setdefault("step", 2)
    fields.setdefault("num_frames", 8)
    result: pb.Result = await served.client.backend.GenerateVideo(pb.GenerateVideoRequest(**fields))
    return result


def frames_of(path: Path) -> tuple[list[np.ndarray], float]:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or 0)
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)], rate


async def test_a_video_is_the_pipelines_frames_as_mp4(
    animator: Served, tiny_animatediff: Path, tmp_path: Path
) -> None:
    import torch
    from diffusers import DiffusionPipeline

    dst = tmp_path / "cat.mp4"
    result = await video(animator, dst=str(dst), seed=7, fps=12)
    assert result.message.startswith("8 frames at 12 fps, 64x64 MP4, seed 7")
    frames, rate = frames_of(dst)
    assert len(frames) == 8
    assert rate == 12
    assert frames[0].shape == (64, 64, 3)
    pipe = DiffusionPipeline.from_pretrained(str(tiny_animatediff), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)

    def bare(seed: int) -> list[np.ndarray]:
        made = pipe(
            prompt="a cat walking",
            width=64,
            height=64,
            num_frames=8,
            num_inference_steps=2,
            generator=torch.Generator("cpu").manual_seed(seed),
            output_type="pil",
        ).frames[0]
        return [np.asarray(frame, dtype=float) for frame in made]

    # H.264 is lossy, and on a random model's noise it loses much: each frame is still far closer to the
    # pipeline's own frame for that seed than to another seed's.
    same, other = bare(7), bare(8)
    for got, want, unlike in zip(frames, same, other, strict=True):
        error, baseline = (np.abs(got.astype(float) - frame).mean() for frame in (want, unlike))
        assert error < baseline / 2, (error, baseline)


async def test_frames_and_fps_default_from_the_options(animator: Served, tmp_path: Path) -> None:
    dst = tmp_path / "defaults.mp4"
    result = await video(animator, dst=str(dst), num_frames=0, fps=0, seed=1)
    assert result.message.startswith("10 frames at 8 fps")
    frames, rate = frames_of(dst)
    assert (len(frames), rate) == (10, 8.0)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"num_frames": 13}, "num_frames must be 1 to 12"),
        ({"num_frames": -1}, "num_frames must be 1 to 12"),
        ({"fps": 500}, "fps must be 1 to 120"),
        ({"start_image": "{tmp}/start.png"}, "start_image: AnimateDiffPipeline makes video from text only"),
        ({"end_image": "{tmp}/start.png"}, "end_image is not read"),
        ({"params": {"motion": "fast"}}, "params ('motion') are not read"),
        ({"prompt": ""}, "prompt is empty"),
        ({"step": 0}, "step must be 1 to 150"),
        ({"dst": "{tmp}/cat.png"}, "does not end in .mp4"),
    ],
)
async def test_bad_video_input_is_refused_by_name(
    animator: Served, tmp_path: Path, fields: dict[str, Any], named: str
) -> None:
    Image.new("RGB", (64, 64)).save(tmp_path / "start.png")
    fields = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in fields.items()}
    fields.setdefault("dst", str(tmp_path / "out.mp4"))
    with pytest.raises(GRPCError) as err:
        await video(animator, **fields)
    assert err.value.status == Status.INVALID_ARGUMENT
    assert named in str(err.value.message)
    assert not (tmp_path / "out.mp4").exists()


async def test_an_image_model_refuses_video_and_a_video_model_upscaling(
    animator: Served, tiny_sd: Path, tmp_path: Path
) -> None:
    with pytest.raises(GRPCError) as err:
        await animator.client.backend.UpscaleImage(
            pb.UpscaleImageRequest(src=str(tmp_path / "x.png"), dst=str(tmp_path / "y.png"))
        )
    assert err.value.status == Status.FAILED_PRECONDITION
    assert "not an upscaler" in str(err.value.message)
    async with serving(Diffusers()) as served:
        assert (await served.client.backend.LoadModel(pb.ModelOptions(Model=str(tiny_sd)))).success
        with pytest.raises(GRPCError) as err:
            await video(served, dst=str(tmp_path / "v.mp4"))
        assert err.value.status == Status.INVALID_ARGUMENT
        assert "makes images, not videos" in str(err.value.message)


# -- UpscaleImage ------------------------------------------------------------------------------------
async def test_upscale_enlarges_by_the_models_factor(tiny_upscaler: Path, tmp_path: Path) -> None:
    small = tmp_path / "small.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(small)
    async with serving(Diffusers()) as served:
        loaded = await served.client.backend.LoadModel(
            pb.ModelOptions(Model=str(tiny_upscaler), Options=["upscale_steps:3"])
        )
        assert loaded.success, loaded.message
        big = tmp_path / "big.png"
        result = await served.client.backend.UpscaleImage(
            pb.UpscaleImageRequest(src=str(small), dst=str(big))
        )
        assert result.message == "32x24 to 64x48 PNG"
        with Image.open(big) as image:
            assert image.size == (64, 48)
        with pytest.raises(GRPCError) as err:
            await served.client.backend.UpscaleImage(
                pb.UpscaleImageRequest(src=str(small), dst=str(tmp_path / "x4.png"), scale=4)
            )
        assert err.value.status == Status.INVALID_ARGUMENT
        assert "enlarges 2x" in str(err.value.message)
        with pytest.raises(GRPCError) as err:
            await served.client.backend.UpscaleImage(
                pb.UpscaleImageRequest(src=str(tmp_path / "none.png"), dst=str(tmp_path / "x.png"))
            )
        assert err.value.status == Status.NOT_FOUND
