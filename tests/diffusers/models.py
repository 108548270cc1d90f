"""Tiny random diffusers pipelines built offline: no image weights ship in any package here.

Each is a real pipeline of its class (a UNet, a VAE, a CLIP text encoder with a byte-level tokenizer, a
scheduler), saved with `save_pretrained` and loaded back the way the backend loads any model folder,
small enough that a 64x64 image takes a fraction of a second on one core. Their outputs are noise: the
tests compare them with the same pipeline run in-process, never with a picture.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: CLIP's byte-to-character table: every byte gets a printable character, so no text is unknown
_PRINTABLE = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]


def _byte_chars() -> list[str]:
    chars, extra = [], 0
    for byte in range(256):
        if byte in _PRINTABLE:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def _tokenizer(folder: Path) -> Any:
    from transformers import CLIPTokenizer

    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({f"{c}</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")  # no merges: one token per byte
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def _text_encoder(tokenizer: Any) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    end = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=48,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=77,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|startoftext|>"),
        eos_token_id=end,
        pad_token_id=end,
    )
    return CLIPTextModel(config)


def _vae(**extra: Any) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        **extra,
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=32,
    )


def _unet(in_channels: int = 4, down: tuple[str, str] | None = None, **extra: Any) -> Any:
    from diffusers import UNet2DConditionModel

    down = down or ("DownBlock2D", "CrossAttnDownBlock2D")
    up = tuple(name.replace("Down", "Up") for name in reversed(down))
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=down,
        up_block_types=up,
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
        **extra,
    )


def _scheduler(**extra: Any) -> Any:
    from diffusers import DDIMScheduler

    settings: dict[str, Any] = {
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
    }
    return DDIMScheduler(**(settings | extra))


def build_tiny_sd(folder: Path) -> Path:
    """A random StableDiffusionPipeline (6-7 MB); its sizes step by 2 (a two-block VAE)."""
    import torch
    from diffusers import StableDiffusionPipeline

    if (folder / "model_index.json").is_file():
        return folder
    torch.manual_seed(0)
    tokenizer = _tokenizer(folder / "_tokenizer_source")
    pipe = StableDiffusionPipeline(
        unet=_unet(),
        vae=_vae(),
        text_encoder=_text_encoder(tokenizer),
        tokenizer=tokenizer,
        scheduler=_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


def build_tiny_animatediff(folder: Path) -> Path:
    """A random AnimateDiffPipeline: the tiny SD's parts with a motion adapter."""
    import torch
    from diffusers import AnimateDiffPipeline, MotionAdapter

    if (folder / "model_index.json").is_file():
        return folder
    torch.manual_seed(1)
    tokenizer = _tokenizer(folder / "_tokenizer_source")
    adapter = MotionAdapter(
        block_out_channels=(32, 64),
        motion_layers_per_block=1,
        motion_norm_num_groups=32,
        motion_num_attention_heads=4,
    )
    pipe = AnimateDiffPipeline(
        vae=_vae(),
        text_encoder=_text_encoder(tokenizer),
        tokenizer=tokenizer,
        unet=_unet(down=("CrossAttnDownBlock2D", "DownBlock2D")),
        motion_adapter=adapter,
        scheduler=_scheduler(beta_schedule="linear"),
    )
    pipe.save_pretrained(folder)
    return folder


def build_tiny_upscaler(folder: Path) -> Path:
    """A random StableDiffusionUpscalePipeline: the low-resolution image rides along the latents (3 + 4
    UNet input channels); it enlarges by its VAE's factor, 2."""
    import torch
    from diffusers import DDPMScheduler, StableDiffusionUpscalePipeline

    if (folder / "model_index.json").is_file():
        return folder
    torch.manual_seed(2)
    tokenizer = _tokenizer(folder / "_tokenizer_source")
    pipe = StableDiffusionUpscalePipeline(
        vae=_vae(scaling_factor=0.08333),  # the upscaler's own VAE factor, which diffusers checks
        text_encoder=_text_encoder(tokenizer),
        tokenizer=tokenizer,
        unet=_unet(in_channels=7, class_embed_type=None, num_class_embeds=1000),
        low_res_scheduler=DDPMScheduler(beta_schedule="scaled_linear"),
        scheduler=_scheduler(),
        max_noise_level=350,
    )
    pipe.save_pretrained(folder)
    return folder


def build_tiny_lora(sd_folder: Path, folder: Path) -> Path:
    """A random LoRA adapter (rank 4) for the tiny SD's UNet attention, as a diffusers LoRA file."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    path = folder / "pytorch_lora_weights.safetensors"
    if path.is_file():
        return path
    torch.manual_seed(3)
    unet = UNet2DConditionModel.from_pretrained(str(sd_folder), subfolder="unet")
    targets = ["to_q", "to_k", "to_v", "to_out.0"]
    # Random (not zero) B matrices, so the adapter changes what the UNet predicts.
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=targets, init_lora_weights=False))
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(str(folder), unet_lora_layers=layers)
    return path
