"""A tiny MLX Llama built in the test session (no download), whose greedy output is scripted.

Every layer adds nothing to the residual stream (zero output projections), so the logits depend on the
current token alone, and the output head is made so that the most likely next token is a chosen
successor: the generation prompt `<|assistant|>` is followed by a Hermes tool call, an opened `<think>` by
reasoning then an answer (both then EOS), and every ordinary token by another ordinary one (never EOS:
plain prompts generate for as long as they are let). The margin is a few nats, so hot sampling wanders.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.tiny_tokenizer import build_tokenizer

CALL = '{"name":"get_weather","arguments":{"city":"Paris"}}'
REASONING = "Clear_sky_outside."
ANSWER = "Sunny."
#: (token, its successor) pairs of the script; "</s>" is EOS
SCRIPT = [
    ("<|assistant|>", "<tool_call>"),
    ("<tool_call>", CALL),
    (CALL, "</tool_call>"),
    ("</tool_call>", "</s>"),
    ("<think>", REASONING),
    (REASONING, "</think>"),
    ("</think>", ANSWER),
    (ANSWER, "</s>"),
]
ADDED = ["<|user|>", "<|system|>", "<|tool|>", "<|assistant|>", "<tool_call>", CALL, "</tool_call>"]
ADDED += ["<think>", REASONING, "</think>", ANSWER]

#: BOS once, a header per message, tools in a system line, a generation prompt, <think> when asked;
#: Hermes-style tool calls (<tool_call>) mark its family
CHAT_TEMPLATE = (
    "{# tool calls: <tool_call>{...}</tool_call> #}{{ bos_token }}"
    "{% if tools %}<|system|>tools: {{ tools | tojson }}\n{% endif %}"
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>"
    "{% if enable_thinking is defined and enable_thinking %}<think>{% endif %}{% endif %}"
)
HIDDEN = 128
#: the successor's logit above the rest (about 0.7 of it, after chance overlaps)
SCALE = 12.0


def build_tiny_mlx_llama(folder: Path, context: int = 4096, seed: int = 0) -> Path:
    """Save the scripted Llama (config.json, model.safetensors, tokenizer) into `folder`."""
    import mlx.core as mx
    import numpy as np
    from mlx.utils import tree_flatten
    from mlx_lm.models.llama import Model, ModelArgs

    tokenizer = build_tokenizer(folder, CHAT_TEMPLATE, added=ADDED)

    vocab = len(tokenizer)
    ids = {t: int(tokenizer.get_vocab()[t]) for t in {*ADDED, "<s>", "</s>", "<unk>"}}
    successor = {ids[a]: ids[b] for a, b in SCRIPT}
    ordinary = [i for i in range(vocab) if i not in set(ids.values())]
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(ordinary)
    for i, token in enumerate(ordinary):  # everything else: on to an ordinary token, never EOS
        successor.setdefault(token, int(shuffled[i]))
    for token in ids.values():
        successor.setdefault(token, ordinary[0])

    embed = rng.standard_normal((vocab, HIDDEN)).astype(np.float32)
    head = np.zeros((vocab, HIDDEN), dtype=np.float32)
    for token, after in successor.items():
        head[after] += embed[token] * (SCALE / HIDDEN)
    normed = embed / np.sqrt((embed**2).mean(axis=1, keepdims=True) + 1e-5)
    picked = (normed @ head.T).argmax(axis=1)
    wrong = [t for t in range(vocab) if picked[t] != successor[t]]
    assert not wrong, f"seed {seed}: the head does not follow the script for tokens {wrong[:5]}"

    args: dict[str, Any] = {
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "num_hidden_layers": 2,
        "intermediate_size": 2 * HIDDEN,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "vocab_size": vocab,
        "max_position_embeddings": context,
        "tie_word_embeddings": False,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    mx.random.seed(seed)
    model = Model(ModelArgs.from_dict(args))  # type: ignore[no-untyped-call]  # mlx-lm's is untyped
    weights = dict(tree_flatten(model.parameters()))
    for name, value in list(weights.items()):
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            weights[name] = mx.zeros_like(value)
    weights["model.embed_tokens.weight"] = mx.array(embed)
    weights["lm_head.weight"] = mx.array(head)
    mx.save_safetensors(str(folder / "model.safetensors"), weights)
    (folder / "config.json").write_text(json.dumps(args, indent=1))
    return folder
