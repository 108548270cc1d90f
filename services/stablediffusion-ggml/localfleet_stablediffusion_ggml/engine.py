"""The stable-diffusion.cpp engine: the only module that imports stable_diffusion_cpp (at LoadModel).

Plain values in and out. stable-diffusion.cpp reports progress through one process-wide callback and
offers no way to stop a run midway: `Renderer` counts steps through it, and a cancelled call's run goes
on to its end (its output is then dropped). The callback it installs is reset after every run to one
that lives as long as the process: stable-diffusion-cpp-python leaves its own per-call callback
installed after the call, and the next progress report (the next load or run) would call freed memory.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from localfleet.errors import Refused

if TYPE_CHECKING:
    from PIL import Image

_lock = threading.Lock()
_quiet: Any = None  # the no-op progress callback, kept alive for the process's life


def samplers() -> list[str]:
    """stable-diffusion.cpp's sample methods by the names its Python binding takes (euler_a, ...)."""
    from stable_diffusion_cpp.stable_diffusion_cpp import SampleMethod

    return [m.name.removesuffix("_SAMPLE_METHOD").lower() for m in SampleMethod if "COUNT" not in m.name]


def schedulers() -> list[str]:
    from stable_diffusion_cpp.stable_diffusion_cpp import Scheduler

    return [m.name.removesuffix("_SCHEDULER").lower() for m in Scheduler if "COUNT" not in m.name]


@dataclass(frozen=True)
class LoadSpec:
    model_path: (
        str  # a checkpoint (.safetensors, .ckpt, .gguf) or a diffusers folder; "" with diffusion_model
    )
    threads: int
    diffusion_model_path: str = ""  # Flux, SD3, Wan: the diffusion model alone, its encoders beside it
    files: dict[str, str] = field(default_factory=dict)  # clip_l_path, t5xxl_path, vae_path, ... (resolved)
    flags: dict[str, bool] = field(default_factory=dict)  # keep_clip_on_cpu, flash_attn, ...
    wtype: str = "default"
    lora_model_dir: str = ""


@dataclass
class Job:
    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    seed: int
    on_step: Callable[[int, int], None]  # must not raise: it runs inside stable-diffusion.cpp
    cfg_scale: float = 7.0
    sampler: str = "default"
    scheduler: str = "default"
    clip_skip: int = -1
    strength: float = 0.75
    vae_tiling: bool = False
    init_image: Image.Image | None = None
    ref_images: list[Image.Image] = field(default_factory=list)
    frames: int = 0
    end_image: Image.Image | None = None


def load(spec: LoadSpec) -> Renderer:
    from stable_diffusion_cpp import StableDiffusion

    _install_quiet()
    try:
        engine = StableDiffusion(
            model_path=spec.model_path,
            diffusion_model_path=spec.diffusion_model_path,
            n_threads=spec.threads,
            wtype=spec.wtype,
            lora_model_dir=spec.lora_model_dir,
            verbose=False,
            **spec.files,
            **spec.flags,
        )
    except (ValueError, RuntimeError, OSError) as exc:
        # stable-diffusion.cpp's reasons go to its log; the binding says only that loading failed.
        raise Refused(
            f"stable-diffusion.cpp could not load {spec.model_path or spec.diffusion_model_path!r}: "
            f"{str(exc)[:200]} (a checkpoint of SD 1.x/2.x/XL, SD3, Flux or Wan, in safetensors, ckpt or "
            "GGUF; Flux, SD3 and Wan also need their text encoders and VAE as options)"
        ) from None
    finally:
        _install_quiet()
    return Renderer(engine, spec)


def _install_quiet() -> None:
    global _quiet  # noqa: PLW0603  (one callback for the process: see the module's docstring)
    import ctypes

    from stable_diffusion_cpp import stable_diffusion_cpp as native

    if _quiet is None:
        _quiet = native.sd_progress_callback(lambda *_: None)
    native.sd_set_progress_callback(_quiet, ctypes.c_void_p(0))


class Renderer:
    """A loaded model: one run at a time (the progress callback is process-wide)."""

    def __init__(self, engine: Any, spec: LoadSpec) -> None:
        self.engine = engine
        self.spec = spec
        source = spec.model_path or spec.diffusion_model_path
        self.name = source.rstrip("/").rsplit("/", 1)[-1]
        self.video_parameters = frozenset(inspect.signature(engine.generate_video).parameters)

    def image(self, job: Job) -> Image.Image:
        kwargs = self._common(job)
        if job.init_image is not None:
            kwargs["init_image"] = job.init_image
            kwargs["strength"] = job.strength
        if job.ref_images:
            kwargs["ref_images"] = job.ref_images
        made: list[Image.Image] = self._run(self.engine.generate_image, job, kwargs)
        return made[0]

    def video(self, job: Job) -> list[Image.Image]:
        kwargs = self._common(job)
        kwargs["video_frames"] = job.frames
        if job.init_image is not None:
            kwargs["init_image"] = job.init_image
        if job.end_image is not None:
            kwargs["end_image"] = job.end_image
        made: list[Image.Image] = self._run(self.engine.generate_video, job, kwargs)
        return made

    def _common(self, job: Job) -> dict[str, Any]:
        return {
            "prompt": job.prompt,
            "negative_prompt": job.negative_prompt,
            "width": job.width,
            "height": job.height,
            "sample_steps": job.steps,
            "seed": job.seed,
            "cfg_scale": job.cfg_scale,
            "sample_method": job.sampler,
            "scheduler": job.scheduler,
            "clip_skip": job.clip_skip,
            "vae_tiling": job.vae_tiling,
        }

    def _run(self, method: Callable[..., Any], job: Job, kwargs: dict[str, Any]) -> Any:
        def progress(step: int, steps: int, _seconds: float) -> None:
            if 0 < step <= steps:  # it also reports loading and decoding; step 0 is the start
                job.on_step(step, steps)

        with _lock:
            try:
                return method(progress_callback=progress, **kwargs)
            except (ValueError, RuntimeError) as exc:
                raise EngineRunFailed(str(exc)) from None
            finally:
                _install_quiet()

    def close(self) -> None:
        close = getattr(self.engine, "close", None)
        if close is not None:
            close()


class EngineRunFailed(Exception):
    """stable-diffusion.cpp refused or failed a run; the message is the binding's."""
