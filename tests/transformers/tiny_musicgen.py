"""A tiny random MusicGen (text encoder, EnCodec and decoder of a few thousand parameters each) with a
word-level T5 tokenizer, saved as a transformers folder: what `facebook/musicgen-small` is, shrunk.

Built once into the test cache (`cache_folder`) and reused by the tests and the benchmark after that.
Its audio is noise: tests check its shape, length and determinism against the same weights in-process.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

#: bump when the builder changes what it writes
VERSION = "3"
#: the codec's rate, hop (8*5*4*4 = 640 samples, so 50 frames a second) and codebooks
SAMPLE_RATE = 32000
FRAME_RATE = 50
CODEBOOKS = 4
#: tokens of text the encoder reads, as T5's tokenizer says for MusicGen
WINDOW = 512
PROMPTS = ["happy rock music with drums", "sad piano song", "80s pop track with bassy drums", "lofi beat"]


def cache_folder() -> Path:
    """Where the model is kept between test runs: LOCALFLEET_TEST_CACHE, else the temp folder."""
    root = os.environ.get("LOCALFLEET_TEST_CACHE") or os.path.join(
        tempfile.gettempdir(), "localfleet-test-cache"
    )
    return Path(root) / f"tiny-musicgen-v{VERSION}"


def build_tiny_musicgen(folder: Path | None = None) -> Path:
    """The model folder, built unless a complete one is there (a few seconds)."""
    folder = folder or cache_folder()
    done = folder / ".complete"
    if done.is_file():
        return folder
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        EncodecConfig,
        EncodecFeatureExtractor,
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        MusicgenProcessor,
        T5Config,
        T5Tokenizer,
    )

    # T5's tokenizer is a Unigram model: whole words here, and single letters for any other word.
    words = sorted({w for prompt in PROMPTS for w in prompt.split()})
    pieces = ["<pad>", "</s>", "<unk>", *(f"\u2581{w}" for w in words), "\u2581"]
    pieces += sorted({c for w in words for c in w} | set("abcdefghijklmnopqrstuvwxyz0123456789"))
    unigram = Tokenizer(models.Unigram([(p, -1.0 if len(p) > 1 else -5.0) for p in pieces], unk_id=2))
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    unigram.decoder = decoders.Metaspace()
    tokenizer = T5Tokenizer(
        tokenizer_object=unigram,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_ids=0,
        model_max_length=WINDOW,
    )
    codebook = 64
    text = T5Config(vocab_size=len(pieces), d_model=32, d_kv=8, d_ff=32, num_layers=1, num_heads=4)
    # The bandwidth gives CODEBOOKS codebooks of 6 bits at 50 Hz (4 * 6 * 50 = 1.2 kbps): an audio
    # prompt (src) encodes into as many codebooks as the decoder predicts.
    codec = EncodecConfig(
        target_bandwidths=[1.2],
        num_filters=4,
        hidden_size=16,
        codebook_size=codebook,
        upsampling_ratios=[8, 5, 4, 4],
        sampling_rate=SAMPLE_RATE,
        audio_channels=1,
    )
    decoder = MusicgenDecoderConfig(
        vocab_size=codebook,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        ffn_dim=64,
        num_codebooks=CODEBOOKS,
        pad_token_id=codebook,
        bos_token_id=codebook,
        max_position_embeddings=4096,
    )
    config = MusicgenConfig(
        text_encoder=text.to_dict(), audio_encoder=codec.to_dict(), decoder=decoder.to_dict()
    )
    torch.manual_seed(0)
    model = MusicgenForConditionalGeneration(config)
    # EnCodec's codebooks start at zero (training fills them), so every code would decode to the same
    # sound: random codebooks make the audio depend on what the decoder samples.
    encodec: Any = model.audio_encoder
    for layer in encodec.quantizer.layers:
        layer.codebook.embed.normal_()
        layer.codebook.embed_avg.copy_(layer.codebook.embed)
    # As the published checkpoints have them: sampling with classifier-free guidance.
    generation = model.generation_config
    generation.decoder_start_token_id = generation.pad_token_id = generation.bos_token_id = codebook
    generation.do_sample, generation.guidance_scale = True, 3.0
    model.save_pretrained(folder)
    processor = MusicgenProcessor(  # type: ignore[no-untyped-call]
        feature_extractor=EncodecFeatureExtractor(sampling_rate=SAMPLE_RATE), tokenizer=tokenizer
    )
    processor.save_pretrained(folder)
    done.touch()
    return folder
