"""A bark.cpp model file of seeded random weights, written with numpy alone.

It has the layout bark.cpp's convert.py writes for a Bark model (services/bark-cpp/localfleet_bark_cpp/
modelfile.py describes it), for a Bark of transformers' BarkConfig with one layer of width `embd` in each
GPT and an Encodec of 4 filters and hidden size 16; Bark's vocabulary sizes and special token ids are
kept, since bark.cpp hard-codes them. The same config built as a transformers BarkModel and converted
with bark-cpp-python's convert.py --use-f16 gives a file of these tensors, names, dims and types (checked
when this was written; the test environment has no torch to redo it). Weights are noise, so the audio is
noise: tests check its format, its length and the sampler's seed, not words.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

MAGIC = 0x67676D6C
F32, F16 = 0, 1
#: a WordPiece vocabulary of letters and a few words: bark.cpp tokenizes with it
VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    *"abcdefghijklmnopqrstuvwxyz.,!?'",
    "hello",
    "world",
    "the",
    "##s",
]
#: (input vocabulary, output vocabulary, embedding tables, heads, bias) of Bark's three GPTs
GPTS = {
    "semantic": (129_600, 10_048, 1, 1, 0),
    "coarse": (12_096, 12_096, 1, 1, 0),
    "fine": (1_056, 1_056, 8, 7, 1),  # its layer norms have biases: convert.py sets the flag
}
BLOCK = 1024
FILTERS, HIDDEN, BINS, LSTM = 4, 16, 1024, 64
ENCODER_RATIOS = (2, 4, 5, 8)
CODEBOOKS = 32
SAMPLE_RATE = 24000

Tensor = tuple[str, tuple[int, ...], int]  # name, dims innermost first, ggml type


def build(path: Path, *, embd: int = 16, codec_f16: bool = True, seed: int = 0) -> Path:
    """Write the model to `path` (a file) and return it. Same arguments, same bytes."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        out.write(struct.pack("<ii", MAGIC, len(VOCAB)))
        for word in VOCAB:
            data = word.encode()
            out.write(struct.pack("<i", len(data)) + data)
        for n_in, n_out, wtes, heads, bias in GPTS.values():
            tensors = list(_gpt(embd, (n_in, n_out), wtes, heads, bias))
            out.write(struct.pack("<10i", 1, 2, embd, BLOCK, bias, n_in, n_out, heads, wtes, F16))
            out.write(struct.pack("<i", len(tensors)))
            for tensor in tensors:
                _write(out, tensor, rng, 0.02)
        out.write(struct.pack("<i", MAGIC))
        ftype = F16 if codec_f16 else F32
        out.write(struct.pack("<9i", 1, HIDDEN, FILTERS, 7, 3, BINS, 24, SAMPLE_RATE, ftype))
        for name, dims, kind in _codec():
            _write(out, (name, dims, kind if codec_f16 else F32), rng, None)
    return path


def _gpt(embd: int, vocab: tuple[int, int], wtes: int, heads: int, bias: int) -> Iterator[Tensor]:
    n_in, n_out = vocab
    for i in range(wtes):
        yield f"model/wte/{i}", (embd, n_in), F16
    yield "model/wpe", (embd, BLOCK), F32
    norms = ("g", "b") if bias else ("g",)
    for part in norms:
        yield f"model/h0/ln_1/{part}", (embd,), F32
    for part in norms:
        yield f"model/h0/ln_2/{part}", (embd,), F32
    yield "model/h0/attn/c_attn/w", (embd, 3 * embd), F16
    yield "model/h0/attn/c_proj/w", (embd, embd), F16
    yield "model/h0/mlp/c_fc/w", (embd, 4 * embd), F16
    yield "model/h0/mlp/c_proj/w", (4 * embd, embd), F16
    for part in norms:
        yield f"model/ln_f/{part}", (embd,), F32
    for i in range(heads):
        yield f"model/lm_head/{i}", (embd, n_out), F16


def _conv(name: str, kernel: int, into: int, out: int) -> Iterator[Tensor]:
    yield f"{name}.bias", (out,), F32
    yield f"{name}.weight", (kernel, into, out), F16


def _resblock(prefix: str, channels: int) -> Iterator[Tensor]:
    yield from _conv(f"{prefix}.block.1.conv.conv", 3, channels, channels // 2)
    yield from _conv(f"{prefix}.block.3.conv.conv", 1, channels // 2, channels)
    yield from _conv(f"{prefix}.shortcut.conv.conv", 1, channels, channels)


def _lstm(prefix: str) -> Iterator[Tensor]:
    for layer in (0, 1):
        yield f"{prefix}.lstm.weight_ih_l{layer}", (LSTM, 4 * LSTM), F16
        yield f"{prefix}.lstm.weight_hh_l{layer}", (LSTM, 4 * LSTM), F16
        yield f"{prefix}.lstm.bias_ih_l{layer}", (4 * LSTM,), F32
        yield f"{prefix}.lstm.bias_hh_l{layer}", (4 * LSTM,), F32


def _codec() -> Iterator[Tensor]:
    yield from _conv("encoder.model.0.conv.conv", 7, 1, FILTERS)
    channels = FILTERS
    for stage, ratio in enumerate(ENCODER_RATIOS):
        yield from _resblock(f"encoder.model.{1 + 3 * stage}", channels)
        yield from _conv(f"encoder.model.{3 + 3 * stage}.conv.conv", 2 * ratio, channels, 2 * channels)
        channels *= 2
    yield from _lstm("encoder.model.13")
    yield from _conv("encoder.model.15.conv.conv", 7, LSTM, HIDDEN)
    yield from _conv("decoder.model.0.conv.conv", 7, HIDDEN, LSTM)
    yield from _lstm("decoder.model.1")
    for stage, ratio in enumerate(reversed(ENCODER_RATIOS)):
        name = f"decoder.model.{3 + 3 * stage}.convtr.convtr"
        yield f"{name}.bias", (channels // 2,), F32
        yield f"{name}.weight", (2 * ratio, channels // 2, channels), F16
        channels //= 2
        yield from _resblock(f"decoder.model.{4 + 3 * stage}", channels)
    yield "decoder.model.15.conv.conv.bias", (), F32  # one channel out: convert.py squeezes it to a scalar
    yield "decoder.model.15.conv.conv.weight", (7, FILTERS, 1), F16
    for i in range(CODEBOOKS):
        yield f"quantizer.vq.layers.{i}._codebook.embed", (HIDDEN, BINS), F32


def _write(out: BinaryIO, tensor: Tensor, rng: np.random.Generator, std: float | None) -> None:
    name, dims, kind = tensor
    count = int(np.prod(dims)) if dims else 1
    if name.endswith("/g"):
        values = np.ones(count)
    elif name.endswith("/b") or ".bias" in name:
        values = np.zeros(count) if std is not None else rng.normal(0, 0.01, count)
    elif std is None:  # codec: the scale of a layer's default init, so the signal neither dies nor explodes
        fan_in = int(np.prod(dims[:-1])) if len(dims) > 1 else 1
        values = rng.normal(0, 1.0 if "codebook" in name else fan_in**-0.5, count)
    else:
        values = rng.normal(0, std, count)
    data = values.astype(np.float16 if kind == F16 else np.float32)
    encoded = name.encode()
    header = struct.pack(f"<3i{len(dims)}i", len(dims), len(encoded), kind, *dims)
    out.write(header + encoded + data.tobytes())
