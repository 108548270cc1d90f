"""The diffusers engine: the only module that imports torch and diffusers (at LoadModel).

Plain values in and out: a `LoadSpec` builds a `Painter`; `Painter.image`, `.video` and `.upscale` run a
pipeline to PIL images, calling `Job.on_step(done, total)` after every denoising step (which raises to
stop the pipeline there). Randomness comes from a CPU generator seeded per call, so a seed gives the same
pixels on any device and, on CPU, the same PNG bit for bit.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from localfleet.errors import BadInput, Refused

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

#: SchedulerType as LocalAI's model configs write it -> (diffusers class, its from_config arguments)
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpm_2": ("KDPM2DiscreteScheduler", {}),
    "k_dpm_2": ("KDPM2DiscreteScheduler", {}),
    "dpm_2_a": ("KDPM2AncestralDiscreteScheduler", {}),
    "k_dpm_2_a": ("KDPM2AncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "dpmpp_2m_sde_karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
    ),
    "dpmpp_sde": ("DPMSolverSinglestepScheduler", {}),
    "dpmpp_sde_karras": ("DPMSolverSinglestepScheduler", {"use_karras_sigmas": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "lcm": ("LCMScheduler", {}),
    "flow_match_euler": ("FlowMatchEulerDiscreteScheduler", {}),
}

#: PipelineType shorthands -> diffusers classes; any other diffusers class name ending in Pipeline works
PIPELINES = {
    "": "DiffusionPipeline",
    "stablediffusion": "StableDiffusionPipeline",
    "sd": "StableDiffusionPipeline",
    "stablediffusionxl": "StableDiffusionXLPipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "stablediffusion3": "StableDiffusion3Pipeline",
    "sd3": "StableDiffusion3Pipeline",
    "flux": "FluxPipeline",
    "autopipeline": "AutoPipelineForText2Image",
    "autopipelinefortext2image": "AutoPipelineForText2Image",
    "img2img": "AutoPipelineForImage2Image",
    "autopipelineforimage2image": "AutoPipelineForImage2Image",
    "animatediff": "AnimateDiffPipeline",
    "stablevideodiffusion": "StableVideoDiffusionPipeline",
    "svd": "StableVideoDiffusionPipeline",
    "wan": "WanPipeline",
    "ltx": "LTXPipeline",
    "upscale": "StableDiffusionUpscalePipeline",
    "latentupscale": "StableDiffusionLatentUpscalePipeline",
}

DTYPES = ("float32", "float16", "bfloat16")


def pipeline_class_name(pipeline_type: str) -> str | None:
    """The diffusers class a PipelineType names, or None (decided without importing diffusers)."""
    name = PIPELINES.get(pipeline_type.lower().replace("_", "").replace("-", ""))
    if name is not None:
        return name
    if pipeline_type.isidentifier() and pipeline_type.endswith("Pipeline"):
        return pipeline_type
    return None


@dataclass(frozen=True)
class LoadSpec:
    path: str  # a diffusers folder (model_index.json) or a single-file checkpoint
    pipeline: str  # a diffusers class name (pipeline_class_name)
    scheduler: str = ""  # a SCHEDULERS key, "" = the model's own
    dtype: str = "float32"
    device: str = ""  # "" = cuda, then mps, when available, else cpu
    img2img: bool = False  # ModelOptions.IMG2IMG: load the image-to-image variant
    cpu_offload: str = "none"  # none, model, sequential (accelerators only)
    attention_slicing: bool = False
    vae_slicing: bool = False
    vae_tiling: bool = False
    loras: tuple[tuple[str, float], ...] = ()


@dataclass
class Job:
    """One generation's inputs, checked by the servicer; `on_step(done, total)` may raise to stop."""

    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    seed: int
    on_step: Callable[[int, int], None]
    guidance: float = 0.0  # 0 = the pipeline's default
    clip_skip: int = 0
    image: Image.Image | None = None  # img2img's source, or video's start image
    ref_images: list[Image.Image] = field(default_factory=list)
    frames: int = 0
    enabled: frozenset[str] | None = None  # EnableParameters: None = every parameter the pipeline takes


def load(spec: LoadSpec) -> Painter:
    import diffusers
    import torch

    diffusers.utils.logging.disable_progress_bar()  # the log gets each step through Job.on_step
    device = spec.device or _best_device(torch)
    dtype = getattr(torch, spec.dtype)
    cls_name = spec.pipeline
    if spec.img2img and cls_name in ("DiffusionPipeline", "AutoPipelineForText2Image"):
        cls_name = "AutoPipelineForImage2Image"
    cls = getattr(diffusers, cls_name, None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise Refused(
            f"PipelineType {cls_name!r} is not a diffusers pipeline (diffusers {diffusers.__version__})"
        )
    try:
        if spec.path.endswith((".safetensors", ".ckpt", ".pt", ".bin")):
            if not hasattr(cls, "from_single_file"):
                raise Refused(
                    f"{cls_name} cannot load a single-file checkpoint; set PipelineType to the model's "
                    "class (StableDiffusion, StableDiffusionXL, Flux, ...)"
                )
            pipe = cls.from_single_file(spec.path, dtype=dtype)
        else:
            pipe = cls.from_pretrained(spec.path, dtype=dtype)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise Refused(f"diffusers could not load {spec.path!r} as {cls_name}: {str(exc)[:300]}") from None
    _alias_text_models(pipe)
    if spec.scheduler:
        sched_name, kwargs = SCHEDULERS[spec.scheduler]
        pipe.scheduler = getattr(diffusers, sched_name).from_config(pipe.scheduler.config, **kwargs)
    if spec.loras:
        _load_loras(pipe, spec.loras)
    _place(pipe, spec, device)
    return Painter(pipe, device, spec)


def _alias_text_models(pipe: Any) -> None:
    """transformers 5 flattened CLIPTextModel (no `.text_model`), which diffusers' clip_skip still reaches
    through: point it at the model itself. Set past nn.Module's registry, so no module cycle appears."""
    for component in pipe.components.values():
        if type(component).__name__.startswith("CLIPTextModel") and "text_model" not in vars(component):
            if not hasattr(component, "final_layer_norm"):
                continue
            object.__setattr__(component, "text_model", component)


def _best_device(torch: Any) -> str:
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _load_loras(pipe: Any, loras: tuple[tuple[str, float], ...]) -> None:
    if not hasattr(pipe, "load_lora_weights"):
        raise Refused(f"{type(pipe).__name__} does not take LoRA adapters")
    names = []
    for i, (path, _) in enumerate(loras):
        name = f"lora{i}"
        try:
            pipe.load_lora_weights(path, adapter_name=name)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise Refused(f"LoRA adapter {path!r} did not load: {str(exc)[:300]}") from None
        names.append(name)
    pipe.set_adapters(names, adapter_weights=[scale for _, scale in loras])


def _place(pipe: Any, spec: LoadSpec, device: str) -> None:
    if spec.cpu_offload != "none":
        if device == "cpu":
            raise Refused(
                "cpu_offload keeps weights in system memory and moves them to the GPU as needed; this "
                "backend runs on the CPU, where the model already is: leave cpu_offload unset"
            )
        if spec.cpu_offload == "sequential":
            pipe.enable_sequential_cpu_offload(device=device)
        else:
            pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    if spec.attention_slicing:
        pipe.enable_attention_slicing()
    vae = getattr(pipe, "vae", None)
    for wanted, method in ((spec.vae_slicing, "enable_slicing"), (spec.vae_tiling, "enable_tiling")):
        if wanted:
            if vae is None or not hasattr(vae, method):
                raise Refused(f"{type(pipe).__name__}'s VAE has no {method.removeprefix('enable_')}")
            getattr(vae, method)()
    pipe.set_progress_bar_config(disable=True)


class Painter:
    """A loaded pipeline. Not thread-safe (its scheduler holds each run's state): one call at a time."""

    def __init__(self, pipe: Any, device: str, spec: LoadSpec) -> None:
        self.pipe = pipe
        self.device = device
        self.spec = spec
        self.name = type(pipe).__name__
        self._img2img: Any = None
        factor = int(getattr(pipe, "vae_scale_factor", 8) or 8)
        # Transformer pipelines (Flux, SD3) pack latents in 2x2 patches: sizes step by twice the factor.
        self.size_step = factor * (2 if hasattr(pipe, "transformer") else 1)
        self.parameters = frozenset(inspect.signature(pipe.__call__).parameters)

    @property
    def makes_video(self) -> bool:
        return "num_frames" in self.parameters

    @property
    def upscales(self) -> bool:
        return "noise_level" in self.parameters or type(self.pipe).__name__.endswith("UpscalePipeline")

    @property
    def upscale_factor(self) -> int:
        if self.name == "StableDiffusionLatentUpscalePipeline":
            return 2
        return int(getattr(self.pipe, "vae_scale_factor", 4))

    @property
    def takes_images(self) -> bool:
        return "image" in self.parameters

    def nbytes(self) -> int:
        total = 0
        for component in self.pipe.components.values():
            params = getattr(component, "parameters", None)
            if callable(params):
                total += sum(p.numel() * p.element_size() for p in params())
        return total

    # -- calls ----------------------------------------------------------------------------------
    def image(self, job: Job) -> Image.Image:
        pipe = self.pipe
        kwargs = self._common(job, pipe)
        if job.image is not None:
            pipe = self._image_to_image()
            kwargs["image"] = job.image
        elif job.ref_images:
            kwargs["image"] = job.ref_images if len(job.ref_images) > 1 else job.ref_images[0]
        made: Image.Image = self._run(pipe, job, kwargs).images[0]
        return made

    def video(self, job: Job) -> list[Image.Image]:
        kwargs = self._common(job, self.pipe)
        kwargs["num_frames"] = job.frames
        if job.image is not None:
            kwargs["image"] = job.image
        frames = self._run(self.pipe, job, kwargs).frames[0]
        return list(frames)

    def upscale(self, image: Image.Image, job: Job) -> Image.Image:
        kwargs: dict[str, Any] = {"prompt": job.prompt, "image": image, "num_inference_steps": job.steps}
        made: Image.Image = self._run(self.pipe, job, kwargs).images[0]
        return made

    def _common(self, job: Job, pipe: Any) -> dict[str, Any]:
        offered: dict[str, Any] = {
            "negative_prompt": job.negative_prompt or None,
            "width": job.width,
            "height": job.height,
            "num_inference_steps": job.steps,
            "guidance_scale": job.guidance or None,
            "clip_skip": job.clip_skip or None,
        }
        accepted = set(inspect.signature(pipe.__call__).parameters)
        kwargs: dict[str, Any] = {"prompt": job.prompt} if "prompt" in accepted else {}
        for key, value in offered.items():
            if value is None or key not in accepted:
                continue
            if job.enabled is not None and key not in job.enabled:
                continue
            kwargs[key] = value
        return kwargs

    def _image_to_image(self) -> Any:
        if "strength" in self.parameters or (self.takes_images and not self.makes_video):
            return self.pipe  # already an image-to-image (or editing) pipeline
        if self._img2img is None:
            from diffusers import AutoPipelineForImage2Image

            try:  # shares the loaded weights: no second copy in memory
                self._img2img = AutoPipelineForImage2Image.from_pipe(self.pipe)
            except (ValueError, KeyError) as exc:
                raise BadInput(
                    f"src: {self.name} has no image-to-image variant ({str(exc)[:160]}); leave src empty"
                ) from None
            self._img2img.set_progress_bar_config(disable=True)
        return self._img2img

    def _run(self, pipe: Any, job: Job, kwargs: dict[str, Any]) -> Any:
        import torch

        generator = torch.Generator(device="cpu").manual_seed(job.seed)
        total = job.steps
        accepted = inspect.signature(pipe.__call__).parameters
        if "callback_on_step_end" in accepted:

            def on_step_end(_pipe: Any, step: int, _timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
                job.on_step(step + 1, total)
                return tensors

            kwargs["callback_on_step_end"] = on_step_end
        elif "callback" in accepted:  # older pipelines (the x4 upscaler)
            kwargs["callback"] = lambda step, _t, _latents: job.on_step(step + 1, total)
            kwargs["callback_steps"] = 1
        with torch.inference_mode():
            return pipe(generator=generator, output_type="pil", **kwargs)
