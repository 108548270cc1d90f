"""A full-size random Chatterbox checkpoint folder, built offline.

chatterbox-tts builds its three networks with sizes fixed in its code (T3: a 520M-parameter Llama; S3Gen:
the S3 tokenizer, CAMPPlus, the flow-matching decoder and HiFT; the voice encoder), so a smaller model
will not load: this is the published layout with seeded random weights (ve.safetensors,
t3_cfg.safetensors, s3gen.safetensors), a character tokenizer.json with the special tokens chatterbox
looks for, and conds.pt (the built-in voice) made from a tone by chatterbox's own `prepare_conditionals`.
It is built once into the test cache (`cache_folder`) and reused by every test and run after that.
Its speech is noise: tests check the audio's format, length and determinism, never words.
"""

from __future__ import annotations

import math
import os
import struct
import tempfile
import wave
from pathlib import Path

#: bump when the builder changes what it writes
VERSION = "1"
#: the reference recordings' rate (any rate works: the engine resamples)
REFERENCE_RATE = 22050
SPECIALS = ["[START]", "[STOP]", "[UNK]", "[SPACE]", "[PAD]", "[SEP]", "[CLS]", "[MASK]"]
CHARACTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'\"-():;"


def cache_folder() -> Path:
    """Where the model is kept between test runs: LOCALFLEET_TEST_CACHE, else the temp folder."""
    root = os.environ.get("LOCALFLEET_TEST_CACHE") or os.path.join(
        tempfile.gettempdir(), "localfleet-test-cache"
    )
    return Path(root) / f"chatterbox-random-v{VERSION}"


def write_reference(path: Path, seconds: float, pitch: float, rate: int = REFERENCE_RATE) -> Path:
    """A voice-like reference recording: a tone with harmonics, rising and falling in loudness."""
    frames = bytearray()
    for i in range(int(seconds * rate)):
        t = i / rate
        envelope = 0.5 + 0.5 * math.sin(2 * math.pi * 3 * t)
        sample = sum(math.sin(2 * math.pi * pitch * k * t) / k for k in (1, 2, 3)) * 0.25 * envelope
        frames += struct.pack("<h", int(max(-1.0, min(1.0, sample)) * 32767))
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(bytes(frames))
    return path


def build(folder: Path | None = None) -> Path:
    folder = folder or cache_folder()
    done = folder / ".complete"
    if done.is_file():
        return folder
    import torch
    from chatterbox.models.s3gen import S3Gen  # type: ignore[import-untyped]
    from chatterbox.models.t3 import T3  # type: ignore[import-untyped]
    from chatterbox.models.voice_encoder import VoiceEncoder  # type: ignore[import-untyped]
    from chatterbox.tts import ChatterboxTTS  # type: ignore[import-untyped]
    from safetensors.torch import save_file
    from tokenizers import Tokenizer  # type: ignore[import-untyped]
    from tokenizers.models import BPE  # type: ignore[import-untyped]

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    for name, make in (("ve", VoiceEncoder), ("t3_cfg", T3), ("s3gen", S3Gen)):
        with torch.no_grad():
            network = make()
            tensors = {k: v.contiguous() for k, v in network.state_dict().items()}
            save_file(tensors, str(folder / f"{name}.safetensors"))
        del network, tensors
    # One token a character (no merges): chatterbox replaces spaces with [SPACE] before encoding.
    vocab = {token: i for i, token in enumerate([*SPECIALS, *CHARACTERS])}
    tokenizer = Tokenizer(BPE(vocab=vocab, merges=[], unk_token="[UNK]"))
    tokenizer.add_special_tokens(SPECIALS)
    tokenizer.save(str(folder / "tokenizer.json"))
    tts = ChatterboxTTS.from_local(folder, "cpu")
    reference = write_reference(folder / "builtin-voice.wav", 4.0, 140.0)
    tts.prepare_conditionals(str(reference), exaggeration=0.5)
    tts.conds.save(folder / "conds.pt")
    reference.unlink()
    done.write_text(VERSION)
    return folder
