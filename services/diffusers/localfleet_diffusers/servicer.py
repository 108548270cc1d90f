"""diffusers: GenerateImage, GenerateVideo and UpscaleImage on Hugging Face diffusers pipelines.

Every request is checked before the pipeline sees it (sizes, steps, frames, the input images, `dst`), and
its output goes to `dst` complete or not at all (`files.replacing`): core ignores `success` for images
and videos, so every failure is a gRPC status. A pipeline runs one call at a time (its scheduler holds a
run's state); the others queue in the runtime. A cancelled call stops at the next denoising step; each
step goes to the log and to the `localfleet_steps` metric.

`seed` 0 (or unset, which proto3 cannot tell apart) draws a random seed; the Result's message and the log
say which, so the image can be made again.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from localfleet import hub, pictures
from localfleet.backend import Backend, ModelRef, lora_adapters
from localfleet.call import Call
from localfleet.errors import BadInput, NotLoaded, Refused
from localfleet.inputs import excerpt
from localfleet.paths import MP4, PNG
from localfleet.proto import backend_pb2 as pb
from localfleet_diffusers.engine import Job

if TYPE_CHECKING:
    from PIL import Image

    from localfleet_diffusers.engine import Painter

#: the pipeline parameters EnableParameters may name (what this backend fills in from a request)
PARAMETERS = ("negative_prompt", "width", "height", "num_inference_steps", "guidance_scale", "clip_skip")
CHECKPOINTS = (".safetensors", ".ckpt")


class DiffusersOptions(pictures.GenerationOptions):
    device: str | None = Field(None, description="cpu, cuda, cuda:1, mps; default the best there is")
    dtype: Literal["float32", "float16", "bfloat16"] | None = Field(
        None, description="weights' type; default DType, else float16 with F16Memory, else float32"
    )
    cpu_offload: Literal["none", "model", "sequential"] | None = Field(
        None, description="GPU memory savers: model (LowVRAM's), sequential (least memory, slowest)"
    )
    attention_slicing: bool = False
    vae_slicing: bool = False
    vae_tiling: bool = False
    upscale_steps: int = Field(20, ge=1, description="denoising steps of UpscaleImage")


class Diffusers(Backend):
    name = "diffusers"
    Options = DiffusersOptions
    default_concurrency = 1

    def __init__(self) -> None:
        self._painter: Painter | None = None
        self._options = DiffusersOptions()
        self._guidance = 0.0
        self._clip_skip = 0

    # -- lifecycle -----------------------------------------------------------------------------
    def refuse(self, model: ModelRef) -> str | None:
        from localfleet_diffusers.engine import pipeline_class_name

        if pipeline_class_name(model.type) is None:
            return f"Type {model.type!r} is not a diffusers pipeline name (e.g. StableDiffusion, Flux)"
        path = Path(model.path)
        if path.exists():
            return _local_refusal(path)
        if "://" in model.name or path.is_absolute():
            return f"model {model.path!r} is neither a diffusers folder nor a checkpoint here"
        return hub.refusal(model.path)

    def load(self, model: ModelRef, options: BaseModel, request: pb.ModelOptions) -> str:
        assert isinstance(options, DiffusersOptions)
        from localfleet_diffusers.engine import SCHEDULERS, LoadSpec, load, pipeline_class_name

        scheduler = request.SchedulerType.lower()
        if scheduler and scheduler not in SCHEDULERS:
            raise Refused(
                f"SchedulerType {request.SchedulerType!r} is unknown; use one of {', '.join(SCHEDULERS)}"
            )
        pipeline = pipeline_class_name(request.PipelineType or model.type)
        if pipeline is None:
            raise Refused(f"PipelineType {request.PipelineType!r} is not a diffusers pipeline name")
        dtype = options.dtype or _dtype(request)
        offload = options.cpu_offload or ("model" if request.LowVRAM else "none")
        spec = LoadSpec(
            path=model.path,
            pipeline=pipeline,
            scheduler=scheduler,
            dtype=dtype,
            device=options.device or "",
            img2img=request.IMG2IMG,
            cpu_offload=offload,
            attention_slicing=options.attention_slicing,
            vae_slicing=options.vae_slicing,
            vae_tiling=options.vae_tiling,
            loras=lora_adapters(request, model.model_dir),
        )
        painter = load(spec)
        self._painter, self._options = painter, options
        self._guidance, self._clip_skip = request.CFGScale, request.CLIPSkip
        loras = f", {len(spec.loras)} LoRA adapter(s)" if spec.loras else ""
        return f"{painter.name} ({dtype}) on {painter.device}{loras}"

    def unload(self) -> str:
        self._painter = None
        return "pipeline released"

    def memory(self) -> dict[str, int]:
        painter = self._painter
        return {"weights": painter.nbytes()} if painter is not None else {}

    # -- RPCs -----------------------------------------------------------------------------------
    async def GenerateImage(self, request: pb.GenerateImageRequest, call: Call) -> pb.Result:
        painter = self._loaded()
        if not request.positive_prompt.strip():
            raise BadInput("positive_prompt is empty; describe the image to generate")
        pictures.check_size(
            request.width, request.height, painter.size_step, self._options.max_pixels, painter.name
        )
        steps = pictures.check_steps(request.step, self._options)
        enabled = _enabled(request.EnableParameters)
        if request.ref_images and not painter.takes_images:
            raise BadInput(
                f"ref_images: {painter.name} takes no reference images; send none, or load an editing model"
            )
        dst = await call.run(call.paths.writable, request.dst, "dst", PNG)
        seed = pictures.seed_or_drawn(request.seed)

        def work() -> str:
            started = time.perf_counter()
            src = self._read(request.src, "src", call) if request.src else None
            refs = [self._read(p, f"ref_images[{i}]", call) for i, p in enumerate(request.ref_images)]
            job = Job(
                prompt=request.positive_prompt,
                negative_prompt=request.negative_prompt,
                width=request.width,
                height=request.height,
                steps=steps,
                seed=seed,
                on_step=call.progress,
                guidance=self._guidance,
                clip_skip=request.CLIPSkip or self._clip_skip,
                image=src,
                ref_images=refs,
                enabled=enabled,
            )
            image = painter.image(job)
            call.raise_if_stopped()
            pictures.write_png(image, dst)
            took = time.perf_counter() - started
            return f"{image.width}x{image.height} PNG, seed {seed}, {steps} steps in {took:.1f} s"

        return pb.Result(success=True, message=await call.run(work))

    async def GenerateVideo(self, request: pb.GenerateVideoRequest, call: Call) -> pb.Result:
        painter = self._loaded()
        if not painter.makes_video:
            raise BadInput(
                f"{painter.name} makes images, not videos; load a video model (AnimateDiff, Wan, ...)"
            )
        if not request.prompt.strip() and not request.start_image:
            raise BadInput("prompt is empty; describe the video to generate (or send a start_image)")
        for name, value in (("end_image", request.end_image), ("audio", request.audio)):
            if value:
                raise BadInput(f"{name} is not read by this backend; send the request without it")
        if request.params:
            names = ", ".join(excerpt(k, 40) for k in list(request.params)[:5])
            raise BadInput(f"params ({names}) are not read by this backend; send the request without them")
        if request.start_image and not painter.takes_images:
            raise BadInput(f"start_image: {painter.name} makes video from text only; send no start_image")
        clip = pictures.check_video(request, self._options, painter.size_step, painter.name)
        dst = await call.run(call.paths.writable, request.dst, "dst", MP4)
        seed = pictures.seed_or_drawn(request.seed)

        def work() -> str:
            start = self._read(request.start_image, "start_image", call) if request.start_image else None
            job = Job(
                prompt=request.prompt,
                negative_prompt=request.negative_prompt,
                width=request.width,
                height=request.height,
                steps=clip.steps,
                seed=seed,
                on_step=call.progress,
                guidance=request.cfg_scale or self._guidance,
                image=start,
                frames=clip.frames,
            )
            images = painter.video(job)
            call.raise_if_stopped()
            written = pictures.write_mp4(images, clip.fps, dst, call.raise_if_stopped)
            return f"{written}, seed {seed}"

        return pb.Result(success=True, message=await call.run(work))

    async def UpscaleImage(self, request: pb.UpscaleImageRequest, call: Call) -> pb.Result:
        painter = self._loaded()
        if not painter.upscales:
            raise NotLoaded(
                f"{painter.name} is not an upscaler; load one (PipelineType upscale) for UpscaleImage"
            )
        factor = painter.upscale_factor
        if request.scale not in (0, factor):
            raise BadInput(f"scale {request.scale}: this upscaler enlarges {factor}x; send {factor} or 0")
        if not request.src:
            raise BadInput("src is empty; send the path of the image to upscale")
        dst = await call.run(call.paths.writable, request.dst, "dst", PNG)
        limit = self._options.max_pixels // (factor * factor)

        def work() -> str:
            image = pictures.read(request.src, "src", call.paths, max_pixels=limit)
            steps = self._options.upscale_steps
            job = Job("", "", image.width, image.height, steps, pictures.seed_or_drawn(0), call.progress)
            out = painter.upscale(image, job)
            call.raise_if_stopped()
            pictures.write_png(out, dst)
            return f"{image.width}x{image.height} to {out.width}x{out.height} PNG"

        return pb.Result(success=True, message=await call.run(work))

    # -- checks -----------------------------------------------------------------------------------
    def _loaded(self) -> Painter:
        if self._painter is None:
            raise NotLoaded()
        return self._painter

    def _read(self, path: str, field: str, call: Call) -> Image.Image:
        return pictures.read(path, field, call.paths, max_pixels=self._options.max_pixels)


def _local_refusal(path: Path) -> str | None:
    if path.is_dir():
        if (path / "model_index.json").is_file():
            return None
        return f"{str(path)!r} has no model_index.json: it is not a diffusers pipeline folder"
    if path.suffix.lower() in CHECKPOINTS:
        return None
    return f"{str(path)!r} is a single file but not a checkpoint ({', '.join(CHECKPOINTS)})"


def _dtype(request: pb.ModelOptions) -> Literal["float32", "float16", "bfloat16"]:
    asked = request.DType.lower()
    named = {
        "f16": "float16",
        "fp16": "float16",
        "float16": "float16",
        "half": "float16",
        "bf16": "bfloat16",
        "bfloat16": "bfloat16",
        "f32": "float32",
        "fp32": "float32",
        "float32": "float32",
    }
    if asked:
        if asked not in named:
            raise Refused(f"DType {request.DType!r} is not one of float32, float16, bfloat16")
        return named[asked]  # type: ignore[return-value]  # the table's values are the Literal's
    return "float16" if request.F16Memory else "float32"


def _enabled(text: str) -> frozenset[str] | None:
    """EnableParameters: the pipeline parameters to pass, comma-separated; "none" = only the prompt."""
    if not text.strip():
        return None
    if text.strip().lower() == "none":
        return frozenset()
    names = frozenset(part.strip() for part in text.split(",") if part.strip())
    unknown = sorted(names - set(PARAMETERS))
    if unknown:
        raise BadInput(
            f"EnableParameters names {', '.join(excerpt(n, 40) for n in unknown[:5])}, not a parameter "
            f"this backend fills in; use some of {', '.join(PARAMETERS)}, or none"
        )
    return names
