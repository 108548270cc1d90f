"""A tiny random LLaVA (CLIP vision tower + Llama) for mlx-vlm, built in the test session (no download).

Built from mlx-vlm's own classes and saved in its own layout, with a Hugging Face LlavaProcessor (a PIL
CLIP image processor and a byte-level BPE tokenizer trained on local text) beside it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.tiny_tokenizer import build_tokenizer

ADDED = ["<|user|>", "<|system|>", "<|assistant|>", "<|tool|>"]
#: BOS once, a header per message, the images where the message's content lists them, tools in a
#: system line, a generation prompt
CHAT_TEMPLATE = (
    "{{ bos_token }}{% if tools %}<|system|>tools: {{ tools | tojson }}\n{% endif %}"
    "{% for m in messages %}<|{{ m['role'] }}|>"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
IMAGE_SIZE = 32
PATCH = 8
#: image tokens one picture becomes: its patches (the CLS position is dropped by the "default" strategy)
IMAGE_TOKENS = (IMAGE_SIZE // PATCH) ** 2


def build_tiny_llava(folder: Path, context: int = 2048, seed: int = 0) -> Path:
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_vlm.models.llava.config import ModelConfig, TextConfig, VisionConfig
    from mlx_vlm.models.llava.llava import Model
    from transformers import CLIPImageProcessor, LlavaProcessor

    tokenizer = build_tokenizer(folder, CHAT_TEMPLATE, added=ADDED, special=("<image>",))
    config: dict[str, Any] = {
        "model_type": "llava",
        "image_token_index": tokenizer.get_vocab()["<image>"],
        "vision_feature_select_strategy": "default",
        "vision_feature_layer": -1,
        "vocab_size": len(tokenizer),
        "projector_hidden_act": "gelu",
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "text_config": {
            "model_type": "llama",
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "intermediate_size": 128,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": context,
            "rms_norm_eps": 1e-5,
            "tie_word_embeddings": False,
        },
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "intermediate_size": 64,
            "num_attention_heads": 4,
            "image_size": IMAGE_SIZE,
            "patch_size": PATCH,
            "projection_dim": 32,
        },
    }
    # mlx-vlm's config classes are untyped
    model_config = ModelConfig.from_dict(config)  # type: ignore[no-untyped-call]
    model_config.text_config = TextConfig.from_dict(config["text_config"])  # type: ignore[no-untyped-call]
    model_config.vision_config = VisionConfig.from_dict(config["vision_config"])  # type: ignore[no-untyped-call]
    mx.random.seed(seed)
    model = Model(model_config)
    mx.save_safetensors(str(folder / "model.safetensors"), dict(tree_flatten(model.parameters())))
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    images = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    processor = LlavaProcessor(  # type: ignore[no-untyped-call]  # transformers' processors are untyped
        image_processor=images,
        tokenizer=tokenizer,
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        num_additional_image_tokens=1,
    )
    processor.save_pretrained(folder)
    return folder


def png(seed: int, size: tuple[int, int] = (48, 40)) -> bytes:
    """A random RGB picture as PNG bytes."""
    import io

    import numpy as np
    from PIL import Image

    pixels = (np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype("uint8")
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()
