"""A tiny random Bark for the tests, built offline: no Bark weights ship in any package.

`build(folder)` writes what a Bark repository on Hugging Face holds: a BarkModel (semantic, coarse and
fine GPTs of one layer, and an EnCodec of 16 channels at 24 kHz), its generation config, a BERT
WordPiece tokenizer and speaker embeddings for `PRESETS` (speaker_embeddings_path.json). The special
token ids of Bark's generation config are fixed (text offset 10,048, semantic vocabulary 10,000, codebooks
of 1,024), so the vocabularies keep their real sizes and only the widths shrink. The weights are seeded
noise: the semantic model almost never ends a sentence, so every generation runs `SEMANTIC_TOKENS`
tokens, about `SEMANTIC_TOKENS / 49.9` seconds of audio.

`cached()` builds it once into the test cache (LOCALFLEET_TEST_CACHE, else the temp folder).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

#: bump when the builder changes what it writes
VERSION = "3"
#: the voice presets written, as Bark's own are named
PRESETS = ("v2/en_speaker_0", "v2/en_speaker_1", "v2/de_speaker_0", "announcer")
#: semantic tokens one generation makes (the generation config's max_new_tokens): about 0.64 s
SEMANTIC_TOKENS = 32
RATE = 24000
WORDS = ["hello", "world", "the", "quick", "brown", "fox", "music", "rain", "##s", "##ing"]


def cache_folder() -> Path:
    root = os.environ.get("LOCALFLEET_TEST_CACHE") or os.path.join(
        tempfile.gettempdir(), "localfleet-test-cache"
    )
    return Path(root) / f"tiny-bark-v{VERSION}"


def cached() -> Path:
    """The tiny Bark in the test cache, built there by the first caller."""
    folder = cache_folder()
    if not (folder / ".complete").is_file():
        build(folder)
        (folder / ".complete").write_text(VERSION)
    return folder


def build(folder: Path, seed: int = 0, presets: tuple[str, ...] = PRESETS) -> Path:
    import torch
    from transformers import BarkConfig, BarkModel, BarkProcessor, BertTokenizer, EncodecConfig
    from transformers.models.bark.generation_configuration_bark import (
        BarkCoarseGenerationConfig,
        BarkFineGenerationConfig,
        BarkGenerationConfig,
        BarkSemanticGenerationConfig,
    )

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz0123456789.,!?'-"]
    (folder / "vocab.txt").write_text("\n".join([*vocab, *WORDS]) + "\n")
    tokenizer = BertTokenizer(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)
    # Weights of Bark's usual scale (0.02) give flat logits: every context, so every voice, would sample
    # the same tokens. At 1.0 the next token depends on what came before, the voice's history included.
    small = {"num_layers": 1, "num_heads": 2, "hidden_size": 16, "block_size": 1024, "initializer_range": 1.0}
    config = BarkConfig(
        semantic_config={**small, "input_vocab_size": 129_600, "output_vocab_size": 10_048},
        coarse_acoustics_config={**small, "input_vocab_size": 12_096, "output_vocab_size": 12_096},
        fine_acoustics_config={
            **small,
            "input_vocab_size": 1056,
            "output_vocab_size": 1056,
            "n_codes_total": 8,
            "n_codes_given": 1,
        },
        codec_config=EncodecConfig(
            target_bandwidths=[6.0],
            num_filters=4,
            hidden_size=16,
            codebook_size=1024,
            upsampling_ratios=[8, 5, 4, 2],  # 320 samples a frame, as Bark's EnCodec: 75 frames a second
            sampling_rate=RATE,
        ).to_dict(),
    )
    torch.manual_seed(seed)
    model = BarkModel(config)
    with torch.no_grad():
        # No end of text: every generation runs its max_new_tokens, so lengths are known.
        model.semantic.lm_head.weight[10_000].zero_()
        # EnCodec's codebooks start at zero (k-means fills them in training): every code would decode
        # to the same sound.
        for layer in model.codec_model.quantizer.layers:
            layer.codebook.embed.normal_()
    model.save_pretrained(str(folder))
    # save_pretrained does not write Bark's nested generation config; the model reads it back from here.
    generation = BarkGenerationConfig.from_sub_model_configs(
        BarkSemanticGenerationConfig(  # type: ignore[no-untyped-call]
            max_new_tokens=SEMANTIC_TOKENS, semantic_vocab_size=10_000
        ),
        BarkCoarseGenerationConfig(max_coarse_history=60, sliding_window_len=60),
        BarkFineGenerationConfig(n_fine_codebooks=8),  # type: ignore[no-untyped-call]
    )
    (folder / "generation_config.json").write_text(json.dumps(generation.to_dict(), indent=1))
    rng = np.random.RandomState(seed + 1)
    embeddings: dict[str, dict[str, str]] = {}
    for index, name in enumerate(presets):
        entry = embeddings[name] = {}
        length = 40 + 10 * index  # semantic tokens of the voice's history
        arrays = {
            "semantic_prompt": rng.randint(0, 10_000, size=length),
            "coarse_prompt": rng.randint(0, 1024, size=(2, length * 3 // 2)),
            "fine_prompt": rng.randint(0, 1024, size=(8, length * 3 // 2)),
        }
        for key, array in arrays.items():
            path = Path("speaker_embeddings") / f"{name}_{key}.npy"
            (folder / path).parent.mkdir(parents=True, exist_ok=True)
            np.save(folder / path, array.astype(np.int64), allow_pickle=False)
            entry[key] = str(path)
    BarkProcessor(tokenizer=tokenizer).save_pretrained(str(folder))  # type: ignore[no-untyped-call]
    (folder / "speaker_embeddings_path.json").write_text(
        json.dumps({"repo_or_path": str(folder), **embeddings}, indent=1)
    )
    return folder
