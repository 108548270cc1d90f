"""A full-size random Stable Diffusion 1.x for stable-diffusion.cpp, built offline.

stable-diffusion.cpp recognises a model by its tensors' names and shapes and knows only the published
architectures, so a tiny model will not load: this is SD 1.x's own UNet, VAE and CLIP ViT-L/14 text
encoder with random weights, in fp16, in the diffusers folder layout (2.1 GB, about a minute to build).
It is built once into the test cache (`cache_folder`) and reused by every test and run after that.
Its images are noise: tests compare them with the same model run in-process.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

#: bump when the builder changes what it writes
VERSION = "1"


def cache_folder() -> Path:
    """Where the model is kept between test runs: LOCALFLEET_TEST_CACHE, else the temp folder."""
    root = os.environ.get("LOCALFLEET_TEST_CACHE") or os.path.join(
        tempfile.gettempdir(), "localfleet-test-cache"
    )
    return Path(root) / f"sd1-random-v{VERSION}"


def build_sd1_random(folder: Path | None = None) -> Path:
    folder = folder or cache_folder()
    done = folder / ".complete"
    if done.is_file():
        return folder
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    unet.to(torch.float16).save_pretrained(str(folder / "unet"))
    del unet
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
    )
    vae.to(torch.float16).save_pretrained(str(folder / "vae"))
    del vae
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=768,
        intermediate_size=3072,
        num_attention_heads=12,
        num_hidden_layers=12,
        max_position_embeddings=77,
        projection_dim=768,
        hidden_act="quick_gelu",
    )
    encoder = CLIPTextModel(config)
    # transformers 5 names the tensors without the `text_model.` prefix SD checkpoints carry, and
    # stable-diffusion.cpp looks them up by that name.
    tensors = {
        (key if key.startswith("text_model.") else f"text_model.{key}"): value.to(torch.float16).contiguous()
        for key, value in encoder.state_dict().items()
    }
    (folder / "text_encoder").mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "text_encoder" / "model.safetensors"))
    config.save_pretrained(str(folder / "text_encoder"))
    done.write_text(VERSION)
    return folder
