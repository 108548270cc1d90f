"""A tiny random Llama built in the test session (no download): head_dim 64, which vLLM's CPU attention
needs, a byte-level BPE tokenizer trained on a few sentences, and a chat template with a tools block."""

from __future__ import annotations

from pathlib import Path

from tests.tiny_llama import save_tiny_llama
from tests.tiny_tokenizer import SENTENCES as CORPUS_SENTENCES
from tests.tiny_tokenizer import build_tokenizer

#: the shared sentences and a tool call, so its markup is a few tokens
CORPUS = [
    *CORPUS_SENTENCES,
    '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call> <think> </think>',
] * 20

#: a Hermes-style template: a header per message, the tools listed in a system block, <tool_call> output
CHAT_TEMPLATE = (
    "{{ bos_token }}{% if tools %}<|system|>You may call tools. <tools>"
    "{% for tool in tools %}{{ tool | tojson }}{% endfor %}</tools> Answer with "
    '<tool_call>{"name": ..., "arguments": ...}</tool_call>\n{% endif %}'
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    "{% if enable_thinking is defined and enable_thinking %}<think>{% endif %}"
)


def build_tiny_llama(folder: Path, *, context: int = 4096) -> Path:
    """A random LlamaForCausalLM (~350k parameters, two heads of 64) and its tokenizer, saved as a
    transformers folder vLLM loads."""
    tokenizer = build_tokenizer(folder, CHAT_TEMPLATE, corpus=CORPUS)
    return save_tiny_llama(
        folder, tokenizer, hidden=128, intermediate=256, heads=2, kv_heads=1, context=context
    )


def build_lora(folder: Path, base: Path, *, rank: int = 8) -> Path:
    """A PEFT LoRA adapter for `build_tiny_llama`'s model, with random weights large enough to change
    its text, written without peft (adapter_config.json and adapter_model.safetensors)."""
    import json

    import torch
    from safetensors.torch import save_file

    config = json.loads((base / "config.json").read_text())
    hidden, inner = config["hidden_size"], config["intermediate_size"]
    kv = config["num_key_value_heads"] * hidden // config["num_attention_heads"]
    shapes = {
        "self_attn.q_proj": (hidden, hidden),
        "self_attn.k_proj": (hidden, kv),
        "self_attn.v_proj": (hidden, kv),
        "self_attn.o_proj": (hidden, hidden),
        "mlp.down_proj": (inner, hidden),
    }
    generator = torch.Generator().manual_seed(1)
    tensors = {}
    for layer in range(config["num_hidden_layers"]):
        for module, (fan_in, fan_out) in shapes.items():
            key = f"base_model.model.model.layers.{layer}.{module}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(rank, fan_in, generator=generator)
            tensors[f"{key}.lora_B.weight"] = torch.randn(fan_out, rank, generator=generator)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    adapter = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(base),
        "r": rank,
        "lora_alpha": 2 * rank,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": sorted({m.split(".")[-1] for m in shapes}),
        "fan_in_fan_out": False,
        "modules_to_save": None,
        "use_rslora": False,
        "use_dora": False,
    }
    (folder / "adapter_config.json").write_text(json.dumps(adapter))
    return folder


def build_tiny_llava(folder: Path, base: Path) -> Path:
    """A random LLaVA (CLIP vision tower, `build_tiny_llama`'s tokenizer with an <image> token) with its
    processor: the smallest model vLLM serves images with."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    tokenizer = PreTrainedTokenizerFast.from_pretrained(base)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    vision = CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=1,
        image_size=32,
        patch_size=8,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    LlavaProcessor(  # type: ignore[no-untyped-call]  # transformers' __init__ is untyped
        image_processor=images,
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    ).save_pretrained(folder)
    return folder
