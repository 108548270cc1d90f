"""What a bark.cpp model file holds, read from its headers with the standard library alone.

bark.cpp reads its file without checking that reads succeed or that sizes are sane: a truncated file
loads garbage, a corrupt header makes it allocate whatever the header says, and a codec saved in f32
(convert.py without --use-f16) loads but aborts the process at its first generation (ggml's conv_1d
asserts f16 kernels). So the backend walks the file here first and hands bark.cpp only a file whose
layout is whole.

The layout (bark.cpp's convert.py): the magic `ggml`; the vocabulary (count, then length and bytes of
each word); three GPT sections (semantic, coarse, fine), each ten int32 hyperparameters, a tensor count
and the tensors; then the Encodec codec: the magic again, nine int32 hyperparameters and tensors up to
the end of the file. A tensor is int32 n_dims, name length and ggml type, the dims (innermost first),
the name, and the data.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

MAGIC = 0x67676D6C  # "ggml", little-endian int32
HEAD = struct.pack("<I", MAGIC)
#: ggml's quantization version is stored in ftype as version * 1000
QNT_FACTOR = 1000
#: ggml type -> (bytes of a block, values in a block): the types bark.cpp writes and quantizes to
TYPE_SIZES = {0: (4, 1), 1: (2, 1), 2: (18, 32), 3: (20, 32), 6: (22, 32), 7: (24, 32), 8: (34, 32)}
#: ggml_ftype of a model section -> its name
FTYPES = {0: "f32", 1: "f16", 2: "q4_0", 3: "q4_1", 7: "q8_0", 8: "q5_0", 9: "q5_1"}
GPT_SECTIONS = ("semantic", "coarse", "fine")
GPT_HPARAMS = (
    "n_layer",
    "n_head",
    "n_embd",
    "block_size",
    "bias",
    "n_in_vocab",
    "n_out_vocab",
    "n_lm_heads",
    "n_wtes",
    "ftype",
)
CODEC_HPARAMS = (
    "in_channels",
    "hidden_dim",
    "n_filters",
    "kernel_size",
    "residual_kernel_size",
    "n_bins",
    "bandwidth",
    "sample_rate",
    "ftype",
)
#: bark.cpp's encodec keeps 32 codebooks (24 kbps), whatever the file's bandwidth says
CODEBOOKS = 32
#: bounds no real file comes near; past them a header is corrupt (bark.cpp would allocate it)
MAX_DIM = 1 << 24
MAX_NAME = 256
MAX_WORD = 1024
MAX_VOCAB = 1 << 20


class NotBarkCpp(Exception):
    """The file is not a whole bark.cpp model; the message says why."""


@dataclass(frozen=True)
class Section:
    hparams: dict[str, int]
    #: tensor name -> dims, innermost first
    tensors: dict[str, tuple[int, ...]]

    @property
    def ftype(self) -> str:
        return FTYPES.get(self.hparams["ftype"] % QNT_FACTOR, str(self.hparams["ftype"]))


@dataclass(frozen=True)
class Layout:
    vocab: int
    semantic: Section
    coarse: Section
    fine: Section
    codec: Section
    nbytes: int

    @property
    def sample_rate(self) -> int:
        return self.codec.hparams["sample_rate"]

    @property
    def ftype(self) -> str:
        """The GPT sections' weight type (bark.cpp's quantize leaves the codec in f16)."""
        return self.semantic.ftype


class _Reader:
    def __init__(self, handle: BinaryIO, size: int, path: Path) -> None:
        self.handle, self.size, self.path = handle, size, path

    def fail(self, what: str) -> NotBarkCpp:
        return NotBarkCpp(
            f"{self.path.name} is not a whole bark.cpp model: {what} at byte {self.handle.tell()}"
        )

    def ints(self, n: int, what: str) -> tuple[int, ...]:
        data = self.handle.read(4 * n)
        if len(data) != 4 * n:
            raise self.fail(f"the file ends inside {what}")
        return struct.unpack(f"<{n}i", data)

    def skip(self, n: int, what: str) -> None:
        if n < 0 or self.handle.tell() + n > self.size:
            raise self.fail(f"the file ends inside {what}")
        self.handle.seek(n, 1)

    def tensor(self, max_dims: int) -> tuple[str, tuple[int, ...]]:
        n_dims, length, kind = self.ints(3, "a tensor header")
        if not 0 <= n_dims <= max_dims or not 0 < length <= MAX_NAME or kind not in TYPE_SIZES:
            raise self.fail(f"a corrupt tensor header ({n_dims} dims, name of {length} bytes, type {kind})")
        dims = self.ints(n_dims, "a tensor header")
        if any(not 0 < d <= MAX_DIM for d in dims):
            raise self.fail(f"a tensor of dims {list(dims)}")
        raw = self.handle.read(length)
        try:
            name = raw.decode("ascii")
        except UnicodeDecodeError:
            raise self.fail(f"a tensor name {raw[:40]!r}") from None
        if len(raw) != length:
            raise self.fail("the file ends inside a tensor name")
        values = 1
        for d in dims:
            values *= d
        block, per = TYPE_SIZES[kind]
        if values % per:
            raise self.fail(f"tensor {name} of {values} values in blocks of {per}")
        self.skip(values // per * block, f"tensor {name}")
        return name, dims


def read(path: Path) -> Layout:
    """The layout of the bark.cpp model at `path`, checked whole; `NotBarkCpp` says what is wrong."""
    try:
        with path.open("rb") as handle:
            size = path.stat().st_size
            return _read(_Reader(handle, size, path), size)
    except OSError as err:
        raise NotBarkCpp(f"cannot read {path}: {err.strerror or err}") from err


def _read(reader: _Reader, size: int) -> Layout:
    head = reader.handle.read(4)
    if head != HEAD:
        kind = "a GGUF file" if head == b"GGUF" else f"a file starting with {head!r}"
        raise NotBarkCpp(f"{reader.path.name} is {kind}, not a bark.cpp model (GGML, magic 'ggml')")
    (words,) = reader.ints(1, "the vocabulary")
    if not 0 < words <= MAX_VOCAB:
        raise reader.fail(f"a vocabulary of {words} words")
    for _ in range(words):
        (length,) = reader.ints(1, "the vocabulary")
        if not 0 <= length <= MAX_WORD:
            raise reader.fail(f"a vocabulary word of {length} bytes")
        reader.skip(length, "the vocabulary")
    semantic, coarse, fine = (_gpt(reader, name) for name in GPT_SECTIONS)
    (magic,) = reader.ints(1, "the codec header")
    if magic & 0xFFFFFFFF != MAGIC:
        raise reader.fail("no codec after the fine model (this is not bark.cpp's layout, e.g. whisper.cpp's)")
    codec = _codec(reader, size)
    return Layout(words, semantic, coarse, fine, codec, size)


def _gpt(reader: _Reader, section: str) -> Section:
    hparams = dict(
        zip(GPT_HPARAMS, reader.ints(len(GPT_HPARAMS), f"the {section} model's header"), strict=True)
    )
    sizes = [v for k, v in hparams.items() if k not in ("bias", "ftype")]
    if any(not 0 < v <= MAX_DIM for v in sizes) or hparams["bias"] not in (0, 1):
        raise reader.fail(f"the {section} model's header {hparams}")
    if hparams["ftype"] % QNT_FACTOR not in FTYPES:
        raise reader.fail(f"the {section} model's weight type {hparams['ftype']}")
    (count,) = reader.ints(1, f"the {section} model's header")
    if not 0 < count <= 4096:
        raise reader.fail(f"{count} tensors in the {section} model")
    tensors = dict(reader.tensor(2) for _ in range(count))
    # bark.cpp sizes its buffers from the header before it reads a tensor: the header must describe the
    # tensors that are there.
    embd = hparams["n_embd"]
    expected = {
        "model/wpe": (embd, hparams["block_size"]),
        f"model/wte/{hparams['n_wtes'] - 1}": (embd, hparams["n_in_vocab"]),
        f"model/lm_head/{hparams['n_lm_heads'] - 1}": (embd, hparams["n_out_vocab"]),
        f"model/h{hparams['n_layer'] - 1}/attn/c_proj/w": (embd, embd),
    }
    for name, dims in expected.items():
        if tensors.get(name) != dims:
            raise NotBarkCpp(
                f"{reader.path.name} is not a bark.cpp model: its {section} model's header {hparams} "
                f"calls for tensor {name} of dims {list(dims)}, which the file "
                + (f"has as {list(tensors[name])}" if name in tensors else "does not have")
            )
    if f"model/h{hparams['n_layer']}/attn/c_proj/w" in tensors or embd % hparams["n_head"]:
        raise reader.fail(f"the {section} model's header {hparams}")
    return Section(hparams, tensors)


def _codec(reader: _Reader, size: int) -> Section:
    hparams = dict(zip(CODEC_HPARAMS, reader.ints(len(CODEC_HPARAMS), "the codec header"), strict=True))
    if any(not 0 < v <= MAX_DIM for k, v in hparams.items() if k != "ftype"):
        raise reader.fail(f"the codec header {hparams}")
    if hparams["ftype"] % QNT_FACTOR != 1:
        kind = FTYPES.get(hparams["ftype"] % QNT_FACTOR, str(hparams["ftype"]))
        raise NotBarkCpp(
            f"{reader.path.name} has its codec in {kind}; bark.cpp's Encodec needs f16 weights (convert "
            "with --use-f16): with these, generation would abort the process"
        )
    tensors: dict[str, tuple[int, ...]] = {}
    while reader.handle.tell() < size:
        name, dims = reader.tensor(3)
        tensors[name] = dims
    last = f"quantizer.vq.layers.{CODEBOOKS - 1}._codebook.embed"
    codebook = (hparams["hidden_dim"], hparams["n_bins"])
    if tensors.get(last) != codebook:
        raise NotBarkCpp(
            f"{reader.path.name} is not a bark.cpp model: its codec has no codebook {last} of dims "
            f"{list(codebook)} (bark.cpp reads {CODEBOOKS})"
        )
    return Section(hparams, tensors)
