"""stablediffusion-ggml: GenerateImage and GenerateVideo on stable-diffusion.cpp (ggml), in process.

Requests are checked as the diffusers backend checks them (`localfleet.pictures`): sizes, steps, frames,
input images and `dst`, each refused by name before the engine runs, and the output written complete or
not at all. One run at a time; Health answers throughout (the engine runs in a worker thread and releases
the GIL). stable-diffusion.cpp cannot stop a run midway: a cancelled call's run finishes and its output
is dropped, nothing written. Each step goes to the log and the `localfleet_steps` metric.

Engine settings are LoadModel options by stable-diffusion.cpp's names (`sampler:euler_a`,
`scheduler:karras`, `threads:8`, `vae_tiling:true`, `clip_l_path:...`); see services/stablediffusion-ggml/
README.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pydantic import BaseModel, Field

from localfleet import pictures
from localfleet.backend import Backend, ModelRef, beside_model
from localfleet.call import Call
from localfleet.cpus import cap_threads, usable
from localfleet.errors import BadInput, EngineFailure, NotLoaded, Refused
from localfleet.paths import MP4, PNG
from localfleet.proto import backend_pb2 as pb
from localfleet_stablediffusion_ggml.engine import EngineRunFailed, Job

if TYPE_CHECKING:
    from localfleet_stablediffusion_ggml.engine import Renderer

T = TypeVar("T")

#: files stable-diffusion.cpp loads as a model
SUFFIXES = (".safetensors", ".ckpt", ".gguf", ".sft")
ENGINE = "stable-diffusion.cpp"
#: sizes step by the VAE's factor (8) for every model family it loads
SIZE_STEP = 8
#: model parts other than the main file, as options naming files beside the model
PART_OPTIONS = (
    "clip_l_path",
    "clip_g_path",
    "t5xxl_path",
    "llm_path",
    "clip_vision_path",
    "vae_path",
    "taesd_path",
    "high_noise_diffusion_model_path",
)
#: engine switches, by the binding's names
FLAGS = (
    "keep_clip_on_cpu",
    "keep_vae_on_cpu",
    "keep_control_net_on_cpu",
    "offload_params_to_cpu",
    "flash_attn",
    "diffusion_flash_attn",
    "enable_mmap",
    "vae_conv_direct",
    "diffusion_conv_direct",
)


class SdOptions(pictures.GenerationOptions):
    sampler: str = Field("default", description="sample method (euler_a, euler, dpmpp2m, lcm, ...)")
    scheduler: str = Field("default", description="sigma schedule (discrete, karras, exponential, ...)")
    threads: int = Field(0, ge=0, description="CPU threads; 0 = ModelOptions.Threads, else the CPUs here")
    wtype: str = Field("default", description="weights' type in memory (f16, q8_0, q4_k, ...)")
    diffusion_model: bool = Field(False, description="Model is the diffusion model alone (Flux, SD3, Wan)")
    video: bool | None = Field(
        None, description="a video model (Wan); default: a diffusion model with t5xxl_path and no clip_l_path"
    )
    vae_tiling: bool = False
    strength: float = Field(0.75, ge=0, le=1, description="how far image to image departs from src")
    # Wan's own defaults
    frames: int = Field(33, ge=1, description="video frames when num_frames is 0")
    fps: int = Field(16, ge=1, le=120, description="video frame rate when fps is 0")
    # model parts and switches
    clip_l_path: str = ""
    clip_g_path: str = ""
    t5xxl_path: str = ""
    llm_path: str = ""
    clip_vision_path: str = ""
    vae_path: str = ""
    taesd_path: str = ""
    high_noise_diffusion_model_path: str = ""
    keep_clip_on_cpu: bool = False
    keep_vae_on_cpu: bool = False
    keep_control_net_on_cpu: bool = False
    offload_params_to_cpu: bool = False
    flash_attn: bool = False
    diffusion_flash_attn: bool = False
    enable_mmap: bool = False
    vae_conv_direct: bool = False
    diffusion_conv_direct: bool = False


class StableDiffusionGgml(Backend):
    name = "stablediffusion-ggml"
    Options = SdOptions
    default_concurrency = 1

    def __init__(self) -> None:
        self._renderer: Renderer | None = None
        self._options = SdOptions()
        self._cfg = 7.0
        self._clip_skip = -1
        self._video = False

    def refuse(self, model: ModelRef) -> str | None:
        path = Path(model.path)
        if path.is_dir():
            if (path / "unet").is_dir() or (path / "model_index.json").is_file():
                return None
            return f"{model.path!r} is a folder but not a diffusers model (no unet/ or model_index.json)"
        if path.suffix.lower() not in SUFFIXES:
            return f"it loads model files ({', '.join(SUFFIXES)}) or diffusers folders, not {model.path!r}"
        if not path.is_file():
            return f"model file {model.path!r} does not exist on this machine"
        return None

    def load(self, model: ModelRef, options: BaseModel, request: pb.ModelOptions) -> str:
        assert isinstance(options, SdOptions)
        from localfleet_stablediffusion_ggml.engine import LoadSpec, load, samplers, schedulers

        for name, value, known in (
            ("sampler", options.sampler, samplers()),
            ("scheduler", options.scheduler, schedulers()),
        ):
            if value != "default" and _plain(value) not in known:
                raise Refused(f"{name} {value!r} is unknown; use one of {', '.join(known)}")
        files = {
            key: beside_model(getattr(options, key), model.model_dir, key)
            for key in PART_OPTIONS
            if getattr(options, key)
        }
        lora_dir = request.LoraBase or (request.ModelPath if request.LoraAdapter else "")
        spec = LoadSpec(
            model_path="" if options.diffusion_model else model.path,
            diffusion_model_path=model.path if options.diffusion_model else "",
            threads=cap_threads(options.threads or request.Threads) or usable(),
            files=files,
            flags={key: True for key in FLAGS if getattr(options, key)},
            wtype=options.wtype,
            lora_model_dir=lora_dir,
        )
        renderer = load(spec)
        self._renderer, self._options = renderer, options
        # stable-diffusion.cpp aborts the process when asked for video from an image model, and cannot
        # say which it loaded: Wan (its only video family) loads as a diffusion model with a T5 encoder
        # and no CLIP-L, which Flux and SD3 have.
        self._video = (
            options.video
            if options.video is not None
            else (options.diffusion_model and bool(options.t5xxl_path) and not options.clip_l_path)
        )
        self._cfg = request.CFGScale or 7.0
        self._clip_skip = request.CLIPSkip or -1
        return f"{renderer.name} on stable-diffusion.cpp, {spec.threads} threads"

    def unload(self) -> str:
        if self._renderer is not None:
            self._renderer.close()
        self._renderer = None
        return "model released"

    # -- RPCs -----------------------------------------------------------------------------------
    async def GenerateImage(self, request: pb.GenerateImageRequest, call: Call) -> pb.Result:
        renderer = self._loaded()
        options = self._options
        if not request.positive_prompt.strip():
            raise BadInput("positive_prompt is empty; describe the image to generate")
        pictures.check_size(request.width, request.height, SIZE_STEP, options.max_pixels, ENGINE)
        steps = pictures.check_steps(request.step, options)
        if request.EnableParameters:
            raise BadInput("EnableParameters is a diffusers setting; send the request without it")
        dst = await call.run(call.paths.writable, request.dst, "dst", PNG)
        seed = pictures.seed_or_drawn(request.seed)

        def work() -> str:
            started = time.perf_counter()
            limit = options.max_pixels
            src = pictures.read(request.src, "src", call.paths, limit) if request.src else None
            refs = [
                pictures.read(p, f"ref_images[{i}]", call.paths, limit)
                for i, p in enumerate(request.ref_images)
            ]
            job = self._job(
                call, request.positive_prompt, request.negative_prompt, request.width, request.height
            )
            job.steps, job.seed, job.init_image, job.ref_images = steps, seed, src, refs
            job.clip_skip = request.CLIPSkip or self._clip_skip
            image = _engine(renderer.image, job)
            call.raise_if_stopped()  # a cancelled call's run went on to its end: drop its image
            pictures.write_png(image, dst)
            took = time.perf_counter() - started
            return f"{image.width}x{image.height} PNG, seed {seed}, {steps} steps in {took:.1f} s"

        return pb.Result(success=True, message=await call.run(work))

    async def GenerateVideo(self, request: pb.GenerateVideoRequest, call: Call) -> pb.Result:
        renderer = self._loaded()
        options = self._options
        if not self._video:
            raise BadInput(
                f"{renderer.name} is loaded as an image model; GenerateVideo needs a video model (Wan: "
                "diffusion_model:true with t5xxl_path and vae_path, or the option video:true)"
            )
        if not request.prompt.strip():
            raise BadInput("prompt is empty; describe the video to generate")
        if request.audio or request.params:
            raise BadInput("audio and params are not read by this backend; send the request without them")
        clip = pictures.check_video(request, options, SIZE_STEP, ENGINE)
        dst = await call.run(call.paths.writable, request.dst, "dst", MP4)
        seed = pictures.seed_or_drawn(request.seed)

        def work() -> str:
            limit = options.max_pixels
            start = (
                pictures.read(request.start_image, "start_image", call.paths, limit)
                if request.start_image
                else None
            )
            end = (
                pictures.read(request.end_image, "end_image", call.paths, limit)
                if request.end_image
                else None
            )
            job = self._job(call, request.prompt, request.negative_prompt, request.width, request.height)
            job.steps, job.seed, job.frames = clip.steps, seed, clip.frames
            job.init_image, job.end_image = start, end
            job.cfg_scale = request.cfg_scale or self._cfg
            images = _engine(renderer.video, job)
            call.raise_if_stopped()
            if len(images) < 2:
                raise BadInput(
                    f"{renderer.name} makes images, not videos: load a video model (Wan) for GenerateVideo"
                )
            written = pictures.write_mp4(images, clip.fps, dst, call.raise_if_stopped)
            return f"{written}, seed {seed}"

        return pb.Result(success=True, message=await call.run(work))

    # -- helpers -----------------------------------------------------------------------------------
    def _loaded(self) -> Renderer:
        if self._renderer is None:
            raise NotLoaded()
        return self._renderer

    def _job(self, call: Call, prompt: str, negative: str, width: int, height: int) -> Job:
        options = self._options
        return Job(
            prompt=prompt,
            negative_prompt=negative,
            width=width,
            height=height,
            steps=1,
            seed=0,
            on_step=call.count_step,
            cfg_scale=self._cfg,
            sampler=_plain(options.sampler),
            scheduler=_plain(options.scheduler),
            clip_skip=self._clip_skip,
            strength=options.strength,
            vae_tiling=options.vae_tiling,
        )


def _plain(name: str) -> str:
    """A sampler or scheduler as the binding names it: LocalAI's "dpm++2m" is "dpmpp2m"."""
    return name.strip().lower().replace("++", "pp").replace("-", "_")


def _engine(run: Callable[[Job], T], job: Job) -> T:
    try:
        return run(job)
    except EngineRunFailed as exc:
        raise EngineFailure(f"stable-diffusion.cpp failed: {str(exc)[:300]}") from None
