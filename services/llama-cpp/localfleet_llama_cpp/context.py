"""The context a model is loaded with: ContextSize, bounded by what the model was trained on.

llama.cpp allocates the whole KV cache for the context it is given, at load: ContextSize 512000 for a
model trained on 32768 went past 3 GiB for a 270M model, and a 8B model would take tens of GiB, for a
context the model cannot use without RoPE scaling. Past the trained length, the context is cut to it
unless RopeFreqScale stretches it (then up to trained / scale), and the load's message says so.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

from localfleet.errors import EngineFailure

GGUF_MAGIC = b"GGUF"
#: how far RopeFreqScale may stretch the trained context: linear RoPE scaling degrades past a few times
#: (YaRN setups use 2-8), and an unbounded stretch would allocate whatever a request asks
MAX_STRETCH = 8.0
# GGUF metadata value types: fixed sizes, strings (u64 length + bytes), arrays (u32 type, u64 count)
_U32, _U64 = "<I", "<Q"
_STRING, _ARRAY = 8, 9
_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_INTS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 10: "<Q", 11: "<q"}


@dataclass(frozen=True)
class Context:
    tokens: int  # what the model is loaded with
    note: str = ""  # why that differs from what was asked, for the load's message


@dataclass(frozen=True)
class Shape:
    """What the GGUF's metadata says of the model's size (0 where it says nothing)."""

    context: int  # tokens it was trained on
    layers: int
    heads: int
    kv_heads: int
    embedding: int
    key_length: int
    value_length: int

    def kv_bytes(self, tokens: int) -> int:
        """An f16 KV cache for `tokens` (llama.cpp's default cache type; 0 when the shape is unknown)."""
        head = self.embedding // self.heads if self.heads else 0
        per_layer = (self.kv_heads or self.heads) * ((self.key_length or head) + (self.value_length or head))
        return tokens * self.layers * per_layer * F16_BYTES


#: the metadata keys (after `<architecture>.`) Shape holds
_SHAPE_KEYS = {
    "context_length": "context",
    "block_count": "layers",
    "attention.head_count": "heads",
    "attention.head_count_kv": "kv_heads",
    "embedding_length": "embedding",
    "attention.key_length": "key_length",
    "attention.value_length": "value_length",
}
F16_BYTES = 2


def shape(path: str) -> Shape:
    """The model's shape from the GGUF file's header: llama.cpp reads hyperparameters only in a full
    model load, and the context and cache sizes must be known before one."""
    found = dict.fromkeys(_SHAPE_KEYS.values(), 0)
    with open(path, "rb") as file:
        reader = _Reader(file)
        if reader.take(4) != GGUF_MAGIC:
            raise EngineFailure(f"{path} is not a GGUF file")
        reader.number(_U32)  # version
        reader.number(_U64)  # tensors
        arch = ""
        for _ in range(reader.number(_U64)):
            key, kind = reader.string(), reader.number(_U32)
            field = _SHAPE_KEYS.get(key.removeprefix(f"{arch}.")) if arch and key.startswith(arch) else None
            if key == "general.architecture" and kind == _STRING:
                arch = reader.string()
            elif field and kind in _INTS:  # per-layer arrays (some models' head counts) stay 0
                found[field] = int(reader.number(_INTS[kind]))
            else:
                reader.skip(kind)
    return Shape(**found)


def trained_context(path: str) -> int:
    """`<architecture>.context_length` (0 when the GGUF has none)."""
    return shape(path).context


class _Reader:
    """Just enough of GGUF's metadata encoding (little-endian) to find one key."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file

    def take(self, size: int) -> bytes:
        data = self.file.read(size)
        if len(data) < size:
            raise EngineFailure("the GGUF file ends inside its metadata: is it whole?")
        return data

    def number(self, fmt: str) -> int:
        value: int = struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]
        return value

    def string(self) -> str:
        return self.take(self.number(_U64)).decode("utf-8", "replace")

    def skip(self, kind: int) -> None:
        if kind == _STRING:
            self.file.seek(self.number(_U64), 1)
        elif kind == _ARRAY:
            item, count = self.number(_U32), self.number(_U64)
            if item in _SIZES:
                self.file.seek(_SIZES[item] * count, 1)
            else:
                for _ in range(count):
                    self.skip(item)
        elif kind in _SIZES:
            self.file.seek(_SIZES[kind], 1)
        else:
            raise EngineFailure(f"the GGUF metadata has a value of unknown type {kind}")


def context_for(asked: int, trained: int, rope_freq_scale: float) -> Context:
    """The context to load with when `asked` for, the model trained on `trained` tokens."""
    stretch = min(1 / rope_freq_scale, MAX_STRETCH) if 0 < rope_freq_scale < 1 else 1.0
    most = int(trained * stretch) if trained > 0 else asked
    if asked <= most:
        return Context(asked)
    how = "with RopeFreqScale " + f"{rope_freq_scale:g}" if stretch > 1 else "without RoPE scaling"
    note = (
        f"ContextSize {asked} is past the {trained} tokens the model was trained on; loaded with {most} "
        f"(the most it reads {how}); set RopeFreqScale below 1 to stretch it further"
    )
    return Context(most, note)
