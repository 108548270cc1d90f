"""A fixed-seed fuzzer over every RPC a backend serves, against a real `localfleet serve` process.

For each RPC it sends messages built from the proto descriptor (every field of the request type, with
extreme numbers, NaN, odd and huge strings, paths, deeply nested JSON and grammars, repeated and nested
fields), mutations of a valid seed request the backend's test supplies, and raw bodies that are no
protobuf at all. Every call has a deadline. The report counts statuses by code, crashes, hangs,
UNKNOWN and INTERNAL (with first examples), Health's worst latency meanwhile and the server's peak RSS;
afterwards Health must answer within 1 s and every seed request must still succeed.

    report = run(Target("local-store", served(LocalStore), [Stage(model, seeds)], folder, 300 * MiB))
    report.check("no_crash")

The same `Target` with a larger `per_rpc` is the long run (benchmarks/fuzz.py). Only the standard
library, protobuf, grpclib, psutil and the runtime are imported, so it runs in any backend's environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import os
import random
import string
import threading
import time
import wave
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import psutil
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from google.protobuf.message import DecodeError, Message
from grpclib.client import Channel
from grpclib.const import Cardinality
from grpclib.encoding.proto import ProtoCodec
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

from localfleet.client import connect
from localfleet.proto import backend_pb2 as pb
from localfleet.service import CONTROL, SERVICE
from localfleet.settings import MiB, split_addr
from localfleet.testing import spawn

#: what the tests assert, each its own test so one known bug can be marked alone
CHECKS = (
    "no_crash",
    "no_hang",
    "no_unknown",
    "no_internal",
    "no_internal_for_undecodable",
    "rss_within_bound",
    "health_answers",
    "still_serves",
)
#: known bugs of the shared runtime, failing a check on every backend until fixed (check -> the bug)
SHARED_BUGS: dict[str, str] = {}
#: statuses that mean a call did not end in time
HANG = frozenset({"HANG", "DEADLINE_EXCEEDED"})
#: findings shown per kind in a summary
EXAMPLES = 3
#: how much of a request or a status message a finding keeps
SHOWN = 160
#: Health's own deadline while the fuzzer runs: slower than this is a stalled event loop
PROBE_TIMEOUT = 5.0

F = FieldDescriptor
_INT_RANGES = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1),
    F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    F.TYPE_ENUM: (-(2**31), 2**31 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1),
    F.TYPE_FIXED32: (0, 2**32 - 1),
    F.TYPE_INT64: (-(2**63), 2**63 - 1),
    F.TYPE_SINT64: (-(2**63), 2**63 - 1),
    F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1),
    F.TYPE_FIXED64: (0, 2**64 - 1),
}
_CARDINALITY = {
    (False, False): Cardinality.UNARY_UNARY,
    (False, True): Cardinality.UNARY_STREAM,
    (True, False): Cardinality.STREAM_UNARY,
    (True, True): Cardinality.STREAM_STREAM,
}


# -- what to fuzz ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stage:
    """A model to load, and a valid request for each RPC fuzzed while it is loaded."""

    model: pb.ModelOptions
    seeds: Mapping[str, Message]


@dataclass(frozen=True)
class Target:
    backend: str  # as `localfleet serve` names it
    rpcs: Sequence[str]  # every RPC it serves (`served`)
    stages: Sequence[Stage]  # none: no model loads here, and the `unseeded` RPCs meet the server unloaded
    folder: Path  # LOCALFLEET_PATH_ROOTS: the one folder requests may read or write (`workspace`)
    rss_bound: int  # bytes the server's peak RSS must stay under
    per_rpc: int = 200
    counts: Mapping[str, int] = field(default_factory=dict)  # per-RPC overrides of `per_rpc`
    seed: int = 1
    deadline: float = 30.0
    max_text: int = 64 * 1024  # the longest string a field gets, in characters
    max_replies: int = 8  # a stream is cancelled after this many replies
    #: requests that found bugs before, sent first: (rpc, request)
    known: Sequence[tuple[str, Message]] = ()
    #: bounds the work one request asks for (tokens, text to speak) in place, so a legitimately slow
    #: request does not read as a hang: fn(rpc, request)
    tame: Callable[[str, Message], None] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    start_timeout: float = 60.0
    #: RPCs no model here can serve (rpc -> why): fuzzed while the first stage is loaded, with no seed
    unseeded: Mapping[str, str] = field(default_factory=dict)

    def count(self, rpc: str) -> int:
        # The runtime answers these the same for every backend: fewer will do.
        usual = self.per_rpc // 4 if rpc in {"Health", "Status", "Free"} else self.per_rpc
        return self.counts.get(rpc, usual)


def capped_tokens(most: int) -> Callable[[str, Message], None]:
    """A `tame` for generating backends: no request asks for more than `most` new tokens."""

    def tame(rpc: str, request: Message) -> None:
        if isinstance(request, pb.PredictOptions) and request.Tokens > most:
            request.Tokens = most

    return tame


def capped_text(tts: int, stream: int | None = None) -> Callable[[str, Message], None]:
    """A `tame` for speech backends: TTS speaks all its text before it answers, so its text is cut to
    `tts` characters; TTSStream is cancelled after a few chunks and keeps its text unless `stream`."""

    def tame(rpc: str, request: Message) -> None:
        if isinstance(request, pb.TTSRequest):
            most = tts if rpc == "TTS" else stream
            if most is not None:
                request.text = request.text[:most]

    return tame


def speech_seeds(folder: Path, text: str = "Hello there.", **stream: Any) -> dict[str, Message]:
    """A TTS backend's two seeds: a sentence to a WAV in `folder`, two sentences streamed (`stream`:
    the voice or language fields a backend reads)."""
    return {
        "TTS": pb.TTSRequest(text=text, dst=str(folder / "hello.wav")),
        "TTSStream": pb.TTSRequest(text=f"{text} How are you?", **stream),
    }


#: the stores seeds' key: every StoresSet the fuzzer sends keeps its dimension (`same_dimension`)
STORE_KEY = [0.1, 0.2, 0.3, 0.4]


def store_seeds() -> dict[str, Message]:
    """A store backend's seeds, one a stores RPC, all on keys of STORE_KEY's dimension."""
    key = pb.StoresKey(Floats=STORE_KEY)
    return {
        "StoresSet": pb.StoresSetOptions(Keys=[key], Values=[pb.StoresValue(Bytes=b"east")]),
        "StoresGet": pb.StoresGetOptions(Keys=[key]),
        "StoresDelete": pb.StoresDeleteOptions(Keys=[pb.StoresKey(Floats=STORE_KEY[::-1])]),
        "StoresFind": pb.StoresFindOptions(Key=key, TopK=3),
    }


def same_dimension(rpc: str, request: Message) -> None:
    """A `tame` for store backends: a StoresSet that would fix another dimension is given the seeds'. A
    store keeps the dimension of its first keys until all are deleted, so one such set would have every
    later request refused for it (mixed dimensions in one request stay: they are refused whole)."""
    dim = len(STORE_KEY)
    if not isinstance(request, pb.StoresSetOptions) or not request.Keys:
        return
    if len({len(key.Floats) for key in request.Keys}) == 1 and len(request.Keys[0].Floats) != dim:
        for key in request.Keys:
            floats = [*key.Floats[:dim], *[0.5] * dim][:dim]
            del key.Floats[:]
            key.Floats.extend(floats)


def chat_seeds(tokens: int) -> tuple[pb.PredictOptions, pb.PredictOptions]:
    """An LLM's two seeds: a sampled prompt (with Messages a template would take) and a templated chat."""
    chat = pb.PredictOptions(
        Prompt="The quick brown fox",
        Messages=[pb.Message(role="user", content="Hello, how are you?")],
        Tokens=tokens,
        Temperature=0.7,
        Seed=1,
    )
    return chat, pb.PredictOptions(Messages=chat.Messages, UseTokenizerTemplate=True, Tokens=tokens)


def served(backend: type) -> list[str]:
    """The RPCs a backend class serves, as the runtime decides (localfleet.service)."""
    return sorted(m.name for m in SERVICE.methods if m.name in CONTROL or hasattr(backend, m.name))


@dataclass(frozen=True)
class Workspace:
    folder: Path
    wav: Path  # one second of a quiet tone, 16 kHz mono: a valid audio input


def workspace(folder: Path) -> Workspace:
    """The folder requests may touch, with a valid WAV beside files that are traps for a reader."""
    folder.mkdir(parents=True, exist_ok=True)
    wav = folder / "tone.wav"
    with wave.open(str(wav), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16_000)
        tone = (int(3000 * math.sin(2 * math.pi * 440 * i / 16_000)) for i in range(16_000))
        out.writeframes(b"".join(v.to_bytes(2, "little", signed=True) for v in tone))
    (folder / "empty.wav").write_bytes(b"")
    (folder / "junk.wav").write_bytes(random.Random(0).randbytes(4096))
    # A header announcing 4 GB of samples: a reader that trusts it allocates them.
    (folder / "liar.wav").write_bytes(wav.read_bytes()[:40] + (2**32 - 1).to_bytes(4, "little"))
    (folder / "folder.wav").mkdir(exist_ok=True)
    _link(folder / "zero.wav", "/dev/zero")
    _link(folder / "loop.wav", str(folder / "loop.wav"))
    if hasattr(os, "mkfifo") and not (folder / "fifo.wav").exists():
        os.mkfifo(folder / "fifo.wav")  # opening it for reading blocks until a writer comes: never
    return Workspace(folder, wav)


def _link(path: Path, to: str) -> None:
    if not path.is_symlink():
        path.symlink_to(to)


# -- values a careless or hostile client sends -------------------------------------------------------
_WORDS = (
    "hello", "world", "the", "a", "user", "assistant", "system", "tool", "</s>", "<s>", "<|im_end|>",
    "<start_of_turn>", "<end_of_turn>", "[INST]", "<think>", "\n", "  ", "é", "中文", "🙂", "store://x",
)  # fmt: skip
_ODD_CHARS = (
    "\x00", "\x01", "\x1b[31m", "\x7f", "\r\n", "\t", "\b", "\u200b", "\u202e", "\ufeff", "\ufffd",
    "\uffff", "\U0010ffff", "\u0301" * 20, "\ud7ff", "ﷺ", "\U0001f600", "\\", '"', "'", "%s%n", "{0}",
)  # fmt: skip
_NUMBERS = ("0", "-1", "1e309", "-1e309", "nan", "NaN", "inf", "0x1f", "9" * 400, "1_000", " 1 ", "١٢٣")
_TEMPLATES = (
    "{{", "}}", "{% for x in range(10**9) %}x{% endfor %}", "{{ raise_exception('fuzz') }}", "{{ messages }}",
    "{% set x = x %}{{ x }}", "${HOME}", "$(id)", "`id`", "<|im_start|>user\n", "<start_of_turn>user\n",
)  # fmt: skip
_OPTION_KEYS = (
    "threads", "context_size", "max_tokens", "max_generations", "batch_max_size", "batch_window_ms", "device",
    "speaker", "length_scale", "noise_scale", "beam_size", "compute_type", "store_dir", "sync", "nice",
    "chat_template", "min_silence_ms", "threshold", "voice", "lang", "cache_prompt", "", "x",
)  # fmt: skip
_MODELS = (
    "", "store://", "store://x", "store://../..", "store://" + "n" * 300, "llama-3-8b.gguf", "gpt2",
    "all-MiniLM-L6-v2", "en_US-joe-medium.onnx", "kokoro", "silero-vad", "org/fuzz-whisper-x", "http://127.0.0.1:9/m",
)  # fmt: skip
_BAD_UTF8 = (b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"ab\x80", b"\xe2\x82")
_HINTS = {
    "grammar": ("grammar",),
    "json": ("tool", "json", "schema", "metadata", "format", "response", "arguments"),
    "path": ("dst", "src", "path", "file", "dir", "audio", "mmproj", "lora", "image", "video"),
    "option": ("option",),
    "model": ("model", "name", "voice"),
}
_KINDS = {
    "empty": 3, "word": 6, "sentence": 6, "unicode": 4, "odd": 4, "huge": 2, "path": 1, "json": 1,
    "grammar": 1, "number": 2, "template": 1, "option": 1, "model": 1,
}  # fmt: skip


class Values:
    """Field values drawn from one seeded random.Random: the same seed, the same values."""

    def __init__(self, rng: random.Random, folder: Path, max_text: int) -> None:
        self.rng = rng
        self.folder = folder
        self.max_text = max_text

    # numbers
    def integer(self, lo: int, hi: int) -> int:
        edges = (0, 1, -1, 2, 7, 255, 256, 65535, 65536, 2**31 - 1, 2**32, lo, hi, lo + 1, hi - 1)
        roll = self.rng.random()
        if roll < 0.3:
            return self.rng.choice([v for v in edges if lo <= v <= hi])
        if roll < 0.75:
            return self.rng.randint(max(lo, -16), min(hi, 64))
        return self.rng.randint(lo, hi)

    def real(self, double: bool) -> float:
        edges = [0.0, -0.0, math.nan, math.inf, -math.inf, 1.0, -1.0, 0.5, 1e-45, 3.4028235e38, -3.4e38]
        if double:
            edges += [1.7976931348623157e308, 5e-324, -1e308]
        roll = self.rng.random()
        if roll < 0.35:
            return self.rng.choice(edges)
        if roll < 0.8:
            return self.rng.uniform(-2.0, 2.0)
        return self.rng.uniform(-1e6, 1e6)

    def nudge(self, value: Any, f: FieldDescriptor) -> Any:
        """A number near or opposite `value`, within its field's range."""
        if f.type == F.TYPE_BOOL:
            return not value
        if f.type in (F.TYPE_FLOAT, F.TYPE_DOUBLE):
            return self.rng.choice([-value, value * 1e6, value + 1e-7, value * -1e30, math.nan])
        lo, hi = _INT_RANGES[f.type]
        moved = self.rng.choice([value + 1, value - 1, -value, value * 1000, value * 2**20, hi, lo])
        return min(hi, max(lo, int(moved)))

    # strings and bytes
    def text(self, hint: str = "") -> str:
        kinds = dict(_KINDS)
        for kind, words in _HINTS.items():
            if any(w in hint.lower() for w in words):
                kinds[kind] += 25
        kind = self.rng.choices(list(kinds), weights=list(kinds.values()))[0]
        made: str = getattr(self, f"_{kind}")()
        return made[: self.max_text]

    def _empty(self) -> str:
        return self.rng.choice(["", " ", "\n", "\x00"])

    def _word(self) -> str:
        return self.rng.choice(_WORDS)

    def _sentence(self) -> str:
        words = self.rng.choices((*_WORDS[:8], "fox", "jumps", "lazy", "dog"), k=self.rng.randint(1, 30))
        return " ".join(words) + self.rng.choice([".", "?", "!", "", "...", ","])

    def _unicode(self) -> str:
        pool = string.ascii_letters + "éßøñ中文字🙂👍🏽\u0301\u200d"
        return "".join(self.rng.choices(pool, k=self.rng.randint(1, 200)))

    def _odd(self) -> str:
        return "".join(self.rng.choices(_ODD_CHARS + tuple(string.printable), k=self.rng.randint(1, 64)))

    def _huge(self) -> str:
        size = self.rng.choice([1024, 8192, self.max_text])
        unit = self.rng.choice(["a", "word ", "Hello world. ", "\n", "🙂", "\x00", "(", "<s>", "1,"])
        return (unit * (size // len(unit) + 1))[:size]

    def _path(self) -> str:
        here = str(self.folder)
        names = ["tone.wav", "empty.wav", "junk.wav", "liar.wav", "folder.wav", "zero.wav", "loop.wav"]
        names += ["fifo.wav", "missing.wav", "missing/x.wav", "out.wav", "../escape.wav", "", "."]
        inside = [f"{here}/{name}" for name in names]
        outside = [
            "/etc/passwd", "/dev/zero", "/dev/urandom", "/proc/self/environ", "/", ".", "..", "~/.ssh/id_rsa",
            "../../../../etc/passwd", "a\x00b", "/" + "n" * 300, "d/" * 3000, "file:///etc/passwd",
            "http://127.0.0.1:9/x.wav", "C:\\Windows\\win.ini", "\\\\server\\share\\x",
        ]  # fmt: skip
        return self.rng.choice(inside * 2 + outside)

    def _json(self) -> str:
        depth = self.rng.choice([10, 100, 1000, 10_000, self.max_text // 2])
        tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
        choices = [
            "[" * depth + "]" * depth,
            '{"a":' * depth + "1" + "}" * depth,
            "[" * depth,
            json.dumps([tool]),
            json.dumps([{**tool, "function": {"name": "f", "parameters": {"$ref": "#"}}}]),
            '{"type": "object", "properties": {"x": {"$ref": "#"}}}',
            '"\\ud800"',
            '{"a": NaN, "b": Infinity, "c": 1e999999}',
            '{"a": 1, "a": 2}',
            "1" * 5000,
            '{"type": ',
            json.dumps({"tool_choice": "required", "messages": [{"role": "user"}]}),
        ]
        return self.rng.choice(choices)

    def _grammar(self) -> str:
        depth = self.rng.choice([10, 100, 1000, 10_000, self.max_text // 3])
        choices = [
            "root ::= " + "(" * depth + '"a"' + ")" * depth,
            "root ::= " + "(" * depth,
            'root ::= "a" root',
            "root ::= root",
            'root ::= "a"{1000000}',
            'root ::= "a"{0,99999999}',
            'root ::= "yes" | "no"',
            "root ::= [",
            'root ::= "\\x',
            'root ::= [^"]*',
            "a ::= b\nb ::= a\nroot ::= a",
            "root ::= " + " | ".join(f'"{i}"' for i in range(depth)),
            "",
        ]
        return self.rng.choice(choices)

    def _number(self) -> str:
        return self.rng.choice(_NUMBERS)

    def _template(self) -> str:
        return self.rng.choice(_TEMPLATES)

    def _option(self) -> str:
        key = self.rng.choice(_OPTION_KEYS)
        value = self.rng.choice(
            [*_NUMBERS, "", "true", "cuda", "cpu", "a:b", str(self.folder / "store"), "../..", self._word()]
        )
        return self.rng.choice([f"{key}:{value}", key, f":{value}", f"{key}={value}"])

    def _model(self) -> str:
        return self.rng.choice([*_MODELS, self._path()])

    def blob(self) -> bytes:
        size = self.rng.choice([0, 1, 16, 1024, 65536])
        return self.rng.choice(
            [
                self.rng.randbytes(size),
                b"\x00" * size,
                b"RIFF\xff\xff\xff\xffWAVEfmt " + self.rng.randbytes(size),
                b"\x89PNG\r\n\x1a\n" + self.rng.randbytes(size),
                b"data:image/png;base64,AAAA",
            ]
        )

    # fields
    def scalar(self, f: FieldDescriptor) -> Any:
        if f.type == F.TYPE_STRING:
            return self.text(f.name)
        if f.type == F.TYPE_BYTES:
            return self.blob()
        if f.type == F.TYPE_BOOL:
            return self.rng.random() < 0.5
        if f.type in (F.TYPE_FLOAT, F.TYPE_DOUBLE):
            return self.real(f.type == F.TYPE_DOUBLE)
        if f.enum_type is not None and self.rng.random() < 0.7:
            return self.rng.choice(f.enum_type.values).number
        return self.integer(*_INT_RANGES[f.type])

    def count(self, f: FieldDescriptor) -> int:
        """How many items a repeated field gets: mostly a few, now and then thousands of numbers."""
        roll = self.rng.random()
        if f.type in (F.TYPE_MESSAGE, F.TYPE_STRING, F.TYPE_BYTES):
            return (
                self.rng.choice([0, 1, 2, 3, self.rng.randint(0, 8)])
                if roll < 0.8
                else self.rng.randint(0, 64)
            )
        if roll < 0.5:
            return self.rng.choice([0, 1, 2, 3, self.rng.randint(0, 8)])
        if roll < 0.85:
            return self.rng.randint(0, 4096)
        return self.rng.randint(4096, 20_000) if roll < 0.95 else self.rng.randint(0, 100_000)


# -- messages from the descriptor, and mutations of a seed ---------------------------------------------
def random_message(values: Values, cls: type[Message]) -> Message:
    message = cls()
    fill(values, message, 0)
    return message


def fill(values: Values, message: Message, depth: int) -> None:
    """Set about half of `message`'s fields (defaults are inputs too), nested messages to depth 3."""
    for f in _fields(message):
        # A set ModelIdentity that differs from the model ends the call before anything else is read.
        skip = 0.9 if f.name == "ModelIdentity" else 0.5
        if values.rng.random() >= skip:
            set_field(values, message, f, depth)


def set_field(values: Values, message: Message, f: FieldDescriptor, depth: int) -> None:
    if _is_map(f) or f.is_repeated:
        for _ in range(values.count(f)):
            add_item(values, message, f, depth)
    elif f.type == F.TYPE_MESSAGE:
        sub = getattr(message, f.name)
        sub.SetInParent()
        if depth < 3:
            fill(values, sub, depth + 1)
    else:
        setattr(message, f.name, values.scalar(f))


def add_item(values: Values, message: Message, f: FieldDescriptor, depth: int) -> None:
    items = getattr(message, f.name)
    if _is_map(f):
        assert f.message_type is not None
        key_field, value_field = f.message_type.fields_by_name["key"], f.message_type.fields_by_name["value"]
        key = values.scalar(key_field)
        if value_field.type == F.TYPE_MESSAGE:
            fill(values, items[key], depth + 1)
        else:
            items[key] = values.scalar(value_field)
    elif f.type == F.TYPE_MESSAGE:
        item = items.add()
        if depth < 3:
            fill(values, item, depth + 1)
    else:
        items.append(values.scalar(f))


def _is_map(f: FieldDescriptor) -> bool:
    return f.message_type is not None and f.message_type.GetOptions().map_entry


def _fields(message: Message) -> list[FieldDescriptor]:
    # upb's descriptors are typed apart from the pure-Python ones they mirror.
    return cast(list[FieldDescriptor], list(message.DESCRIPTOR.fields))


def _present(message: Message) -> list[FieldDescriptor]:
    return [f for f, _ in message.ListFields()]


def mutate(values: Values, seed: Message) -> Message | bytes:
    """`seed` changed a little: fields edited (a message), or its encoding damaged (bytes)."""
    roll = values.rng.random()
    if roll < 0.6:
        copy = type(seed)()
        copy.CopyFrom(seed)
        for _ in range(values.rng.randint(1, 3)):
            mutate_fields(values, copy, 0)
        return copy
    if roll < 0.85:
        return damage(values, seed.SerializeToString())
    return bad_utf8(values, seed)


def mutate_fields(values: Values, message: Message, depth: int) -> None:
    fields = _fields(message)
    if not fields:
        return
    present = _present(message)
    f = values.rng.choice(present if present and values.rng.random() < 0.7 else fields)
    nested = f.type == F.TYPE_MESSAGE and not _is_map(f) and depth < 3 and values.rng.random() < 0.5
    if nested and not f.is_repeated:
        sub = getattr(message, f.name)
        sub.SetInParent()
        mutate_fields(values, sub, depth + 1)
    elif nested and len(getattr(message, f.name)):
        mutate_fields(values, values.rng.choice(list(getattr(message, f.name))), depth + 1)
    else:
        change(values, message, f, depth)


def change(values: Values, message: Message, f: FieldDescriptor, depth: int) -> None:
    rng = values.rng
    if rng.random() < 0.15:
        message.ClearField(f.name)
    elif _is_map(f) or f.is_repeated:
        change_items(values, message, f, depth)
    elif f.type == F.TYPE_STRING and getattr(message, f.name):
        setattr(message, f.name, edit(values, getattr(message, f.name), f.name))
    elif f.type == F.TYPE_MESSAGE:
        fill(values, getattr(message, f.name), depth + 1)
    elif f.type not in (F.TYPE_STRING, F.TYPE_BYTES) and rng.random() < 0.5:
        setattr(message, f.name, values.nudge(getattr(message, f.name), f))
    else:
        setattr(message, f.name, values.scalar(f))


def change_items(values: Values, message: Message, f: FieldDescriptor, depth: int) -> None:
    items = getattr(message, f.name)
    op = values.rng.choice(["add", "add", "duplicate", "drop", "clear"])
    if op == "add":
        add_item(values, message, f, depth)
    elif op == "duplicate" and not _is_map(f):
        copies = list(items) * values.rng.randint(1, 8)
        if f.type == F.TYPE_MESSAGE:
            for item in copies[:256]:
                items.add().CopyFrom(item)
        else:
            items.extend(copies[:100_000])
    elif op == "drop" and not _is_map(f) and len(items):
        del items[values.rng.randrange(len(items))]
    else:
        message.ClearField(f.name)


def edit(values: Values, text: str, hint: str) -> str:
    """`text` cut, repeated, nested or spiked with odd characters."""
    rng = values.rng
    at = rng.randint(0, len(text))
    depth = rng.choice([2, 50, 5000])
    edited = rng.choice(
        [
            text[:at],
            text * rng.randint(2, 200),
            text[:at] + rng.choice(_ODD_CHARS) + text[at:],
            "(" * depth + text + ")" * depth,
            "[" * depth + text,
            text + values.text(hint),
            values.text(hint),
        ]
    )
    return edited[: values.max_text]


def damage(values: Values, data: bytes) -> bytes:
    """An encoding damaged as a broken client or a bit flip would: usually no longer a valid message."""
    rng = values.rng
    body = bytearray(data)
    op = rng.choice(["flip", "truncate", "insert", "length", "repeat", "unknown", "groups"])
    if op == "flip" and body:
        for _ in range(rng.randint(1, 4)):
            body[rng.randrange(len(body))] ^= 1 << rng.randrange(8)
    elif op == "truncate":
        del body[rng.randint(0, len(body)) :]
    elif op == "insert":
        at = rng.randint(0, len(body))
        body[at:at] = rng.randbytes(rng.randint(1, 16))
    elif op == "length":  # a field announcing far more bytes than follow
        body += _tag(rng.randint(1, 64), 2) + _varint(rng.choice([2**31, 2**32 - 1, 2**62, 2**64 - 1]))
    elif op == "repeat":  # a valid merge of the message with itself
        body *= rng.randint(2, 8)
    elif op == "unknown":
        body += _tag(rng.randint(1000, 2**29 - 1), 0) + _varint(rng.randrange(2**64))
    else:
        body += deep_groups(rng.choice([10, 1000, 100_000]))
    return bytes(body)


def bad_utf8(values: Values, seed: Message) -> bytes:
    """`seed` with one of its string fields set again to bytes that are not UTF-8 (the last one wins)."""
    strings = [f for f in _fields(seed) if f.type == F.TYPE_STRING]
    if not strings:
        return damage(values, seed.SerializeToString())
    f = values.rng.choice(strings)
    bad = values.rng.choice(_BAD_UTF8) * values.rng.choice([1, 3, 1000])
    return seed.SerializeToString() + _tag(f.number, 2) + _varint(len(bad)) + bad


def raw_body(values: Values) -> bytes:
    """Bytes that are no message of the request type: noise, text, or another message entirely."""
    rng = values.rng
    size = rng.choice([1, 7, 64, 4096, 65536])
    other = rng.choice([pb.ModelOptions, pb.TTSRequest, pb.PredictOptions, pb.StoresSetOptions])
    return rng.choice(
        [
            rng.randbytes(size),
            b"\xff" * size,
            b"\x00" * size,
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b'{"Prompt": "hello", "Tokens": 8}',
            _tag(1, 0) + b"\xff" * 11,  # a varint longer than ten bytes
            deep_groups(rng.choice([100, 100_000])),
            random_message(values, other).SerializeToString(),
        ]
    )


def deep_groups(depth: int) -> bytes:
    """Unknown groups opened `depth` deep (a decoder that recurses on them runs out of stack)."""
    return _tag(536_870_000, 3) * depth


def _tag(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


# -- the cases each RPC gets --------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    rpc: str
    origin: str  # "random #12", "mutated #40", "raw #7": regenerated from the seed alone
    body: bytes
    shown: str  # a short repr of the request
    decodes: bool  # whether the body is a valid message of the request type


class Cases:
    """One RPC's requests, made on demand from a random.Random seeded by (seed, RPC): the same requests
    in every run, whatever else is fuzzed beside them."""

    def __init__(self, target: Target, rpc: str, seed: Message | None) -> None:
        self.rpc = rpc
        self.seed = seed
        self.tame = target.tame
        self.type: type[Message] = getattr(pb, SERVICE.methods_by_name[rpc].input_type.name)
        self.values = Values(random.Random(f"{target.seed}:{rpc}"), target.folder, target.max_text)
        self.made = 0

    def next(self) -> Case:
        self.made += 1
        roll = self.values.rng.random()
        if roll < 0.2:
            body: Message | bytes = raw_body(self.values)
            origin = "raw"
        elif roll < 0.6 and self.seed is not None:
            body, origin = mutate(self.values, self.seed), "mutated"
        else:
            body, origin = random_message(self.values, self.type), "random"
        data = self._encoded(body)
        return Case(self.rpc, f"{origin} #{self.made}", data, shown(body), _decodes(self.type, data))

    def _encoded(self, body: Message | bytes) -> bytes:
        """Serialized, with the work it asks for bounded by `tame` (a damaged body that still decodes
        is tamed too; one that changes is sent re-encoded)."""
        if self.tame is None:
            return body if isinstance(body, bytes) else body.SerializeToString()
        if isinstance(body, bytes):
            try:
                decoded = self.type.FromString(body)
            except DecodeError:
                return body
            before = decoded.SerializeToString()
            self.tame(self.rpc, decoded)
            return body if decoded.SerializeToString() == before else decoded.SerializeToString()
        self.tame(self.rpc, body)
        return body.SerializeToString()


def replay(target: Target, rpc: str, number: int) -> Case:
    """Case `number` of `rpc` again (the "#N" of a finding), to reproduce it alone."""
    seeds = dict(_control_seeds(target))
    for stage in target.stages:
        seeds.update(stage.seeds)
    cases = Cases(target, rpc, seeds.get(rpc))
    for _ in range(number - 1):
        cases.next()
    return cases.next()


def _control_seeds(target: Target) -> dict[str, Message]:
    seeds: dict[str, Message] = {rpc: pb.HealthMessage() for rpc in CONTROL}
    if target.stages:  # a target with none fuzzes a server no model here can load (`unseeded` only)
        seeds["LoadModel"] = target.stages[0].model
    return seeds


def _decodes(cls: type[Message], data: bytes) -> bool:
    try:
        cls.FromString(data)
    except DecodeError:
        return False
    return True


def shown(body: Message | bytes) -> str:
    """A short repr of a request: each field's value cut, the whole cut to SHOWN characters."""
    if isinstance(body, bytes):
        return f"bytes[{len(body)}] {body[:48]!r}"
    parts = [f"{f.name}={_cut(repr(_plain(getattr(body, f.name))), 48)}" for f in _present(body)]
    return _cut(f"{type(body).__name__}({', '.join(parts)})", SHOWN)


def _plain(value: Any) -> Any:
    if isinstance(value, Message):
        return shown(value)
    if hasattr(value, "__len__") and not isinstance(value, str | bytes):
        items = list(value.items()) if hasattr(value, "items") else list(value)
        return f"[{len(items)} items] {items[:3]!r}"
    return value


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[: limit - 20]}...({len(text)} chars)"


def known_cases(target: Target, rpcs: Sequence[str]) -> list[Case]:
    """Requests that found bugs before, sent before the generated ones: the backend's own (`known`),
    a 1 MB ModelIdentity on every RPC that has one (it once froze Health) or Model on LoadModel, and a
    LoadModel of a name too long for a file name that ends as the seed model's does (its extension)."""
    known = [(rpc, request) for rpc, request in target.known if rpc in rpcs]
    if "LoadModel" in rpcs:
        ending = target.stages[0].model.Model if target.stages else ".bin"
        known.append(("LoadModel", pb.ModelOptions(Model="x" * 300 + ending)))
    for rpc in rpcs:
        request = getattr(pb, SERVICE.methods_by_name[rpc].input_type.name)()
        name = "Model" if rpc == "LoadModel" else "ModelIdentity"
        if name in request.DESCRIPTOR.fields_by_name:
            setattr(request, name, "i" * 1_000_000)
            known.append((rpc, request))
    return [
        Case(rpc, f"known #{n}", request.SerializeToString(), shown(request), True)
        for n, (rpc, request) in enumerate(known, 1)
    ]


def schedule(target: Target, rpcs: Sequence[str]) -> list[str]:
    """Each RPC `count` times, interleaved in a fixed random order (state one RPC leaves meets others)."""
    order = [rpc for rpc in rpcs for _ in range(target.count(rpc))]
    random.Random(f"{target.seed}:order:{','.join(rpcs)}").shuffle(order)
    return order


# -- the report ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Finding:
    case: Case
    status: str
    message: str

    def __str__(self) -> str:
        said = _cut(self.message, SHOWN)
        return f"{self.case.rpc} {self.case.origin} -> {self.status}: {said!r}; {self.case.shown}"


@dataclass
class Report:
    backend: str
    rss_bound: int
    messages: int = 0
    seconds: float = 0.0
    statuses: Counter[str] = field(default_factory=Counter)
    per_rpc: dict[str, Counter[str]] = field(default_factory=dict)
    examples: dict[str, list[Finding]] = field(default_factory=dict)  # the first few of each status
    rpc_seconds: dict[str, float] = field(default_factory=dict)  # time spent in each RPC's calls
    crash: Finding | None = None  # the call during which the server exited
    exit_code: int | None = None
    hangs: list[Finding] = field(default_factory=list)
    unknown: list[Finding] = field(default_factory=list)
    internal: list[Finding] = field(default_factory=list)  # for requests that decode
    undecodable: list[Finding] = field(default_factory=list)  # INTERNAL for bodies that do not
    dropped: list[Finding] = field(default_factory=list)  # calls ended without a status
    loaded_rss: int = 0  # after the first model loaded, before any fuzzing
    peak_rss: int = 0
    peak_during: str = ""  # the call in flight when the sampled peak was seen
    killed_for_memory: int = 0  # the RSS at which the fuzzer stopped the server, as a runaway
    killed_by: Finding | None = None  # the call that was running then
    health_probes: int = 0
    health_worst: float = 0.0
    health_failures: list[str] = field(default_factory=list)
    tracebacks: Counter[str] = field(default_factory=Counter)  # in the server's log, by exception line
    still_serves: list[str] = field(default_factory=list)  # what failed after the run

    def record(self, case: Case, status: str, message: str, seconds: float) -> None:
        self.messages += 1
        self.rpc_seconds[case.rpc] = self.rpc_seconds.get(case.rpc, 0.0) + seconds
        self.statuses[status] += 1
        self.per_rpc.setdefault(case.rpc, Counter())[status] += 1
        finding = Finding(case, status, message)
        firsts = self.examples.setdefault(status, [])
        if len(firsts) < EXAMPLES:
            firsts.append(finding)
        if status in HANG:
            self.hangs.append(finding)
        elif status == "UNKNOWN":
            self.unknown.append(finding)
        elif status == "INTERNAL":
            (self.internal if case.decodes else self.undecodable).append(finding)
        elif status == "DROPPED":
            self.dropped.append(finding)

    def summary(self) -> str:
        lines = [
            f"{self.backend}: {self.messages} messages in {self.seconds:.1f} s; "
            + ", ".join(f"{code} {n}" for code, n in self.statuses.most_common()),
            f"  peak RSS {self.peak_rss / MiB:.0f} MiB (after load {self.loaded_rss / MiB:.0f} MiB, "
            f"bound {self.rss_bound / MiB:.0f} MiB); Health worst {self.health_worst * 1e3:.0f} ms over "
            f"{self.health_probes} probes; {self.tracebacks.total()} tracebacks in the server's log",
            f"  peak RSS during {self.peak_during}",
        ]
        for rpc, codes in sorted(self.per_rpc.items()):
            counts = ", ".join(f"{code} {n}" for code, n in codes.most_common())
            lines.append(f"  {rpc}: {counts} ({self.rpc_seconds[rpc]:.1f} s)")
        if self.crash is not None:
            lines.append(f"  CRASH (exit {self.exit_code}): {self.crash}")
        if self.killed_for_memory:
            lines.append(
                f"  KILLED at {self.killed_for_memory / MiB:.0f} MiB RSS (runaway memory; the run stopped "
                f"there, and whether it still serves was not checked): {self.killed_by}"
            )
        kinds = ("DROPPED", self.dropped), ("HANG", self.hangs), ("UNKNOWN", self.unknown)
        for kind, found in (*kinds, ("INTERNAL", self.internal), ("INTERNAL, undecodable", self.undecodable)):
            lines += [f"  {kind} ({len(found)}): {f}" for f in found[:EXAMPLES]]
        lines += [f"  Health: {problem}" for problem in self.health_failures[:EXAMPLES]]
        lines += [f"  traceback x{n}: {line}" for line, n in self.tracebacks.most_common(EXAMPLES)]
        lines += [f"  after the run: {problem}" for problem in self.still_serves]
        return "\n".join(lines)

    def failed(self, check: str) -> bool:
        failed = {
            "no_crash": self.crash is not None or self.exit_code is not None or bool(self.dropped),
            "no_hang": bool(self.hangs),
            "no_unknown": bool(self.unknown),
            "no_internal": bool(self.internal),
            "no_internal_for_undecodable": bool(self.undecodable),
            "rss_within_bound": self.peak_rss >= self.rss_bound or bool(self.killed_for_memory),
            "health_answers": bool(self.health_failures),
            "still_serves": bool(self.still_serves),
        }
        return failed[check]

    def check(self, check: str) -> None:
        assert not self.failed(check), f"fuzzing {check} failed:\n{self.summary()}"


def params(bugs: Mapping[str, str] | None = None) -> list[Any]:
    """CHECKS as pytest parameters, those a known bug fails marked xfail(strict=True) naming it, so the
    fix turns them green (bugs: check -> the backend's own bug; the shared runtime's are added)."""
    import pytest

    known = {**SHARED_BUGS, **(bugs or {})}
    marks = {check: pytest.mark.xfail(strict=True, reason=bug) for check, bug in known.items()}
    return [pytest.param(check, id=check, marks=marks.get(check, ())) for check in CHECKS]


# -- running it ---------------------------------------------------------------------------------------
def run(target: Target, progress: Callable[[str], None] | None = None) -> Report:
    """Serve `target.backend` in a real process, fuzz every RPC, check it still serves; the report."""
    _check_seeds(target)
    workspace(target.folder)
    env = {
        "LOCALFLEET_PATH_ROOTS": json.dumps([str(target.folder)]),
        "LOCALAI_BACKEND_PARENT_WATCH": "false",
        "HF_HUB_OFFLINE": "1",  # a model name that looks like a hub id must fail, not download
        "TRANSFORMERS_OFFLINE": "1",
        **target.env,
    }
    report = Report(target.backend, target.rss_bound)
    started = time.monotonic()
    with (
        spawn(target.backend, env=env, timeout=target.start_timeout) as proc,
        Memory(proc.popen.pid, kill_above=_kill_above(target.rss_bound)) as memory,
    ):
        session = _Session(
            target,
            addr=proc.addr,
            exited=proc.popen.poll,
            memory=memory,
            report=report,
            progress=progress or _quiet,
        )
        asyncio.run(session.run())
        report.peak_rss = max(memory.peak, _high_water(proc.popen.pid))
        report.peak_during = memory.peak_during
        report.killed_for_memory = memory.killed
        report.exit_code = None if memory.killed else proc.popen.poll()  # our kill is no crash
        report.tracebacks = _tracebacks(proc.log)
    report.seconds = time.monotonic() - started
    return report


def _kill_above(bound: int) -> int:
    """Where a runaway server is stopped: well past its bound (so the report says how far it went),
    never past half of this machine's memory."""
    return min(max(2 * bound, 2560 * MiB), psutil.virtual_memory().total // 2)


def _tracebacks(log: Sequence[str]) -> Counter[str]:
    """Tracebacks in a log, counted by their exception line (the first unindented line after)."""
    found: Counter[str] = Counter()
    inside = False
    for line in log:
        if "Traceback (most recent call last)" in line:
            inside = True
        elif inside and line[:1] not in (" ", "\t"):
            found[_cut(line.strip(), SHOWN)] += 1
            inside = False
    return found


def _check_seeds(target: Target) -> None:
    seeded = {rpc for stage in target.stages for rpc in stage.seeds}
    if missing := sorted(set(target.rpcs) - CONTROL - seeded - set(target.unseeded)):
        raise ValueError(f"{target.backend}: no seed request for {', '.join(missing)}")
    if stray := sorted(seeded - set(target.rpcs)):
        raise ValueError(f"{target.backend}: seeds for RPCs it does not serve: {', '.join(stray)}")


def _quiet(_: str) -> None:
    return None


class _Bodies(ProtoCodec):
    """Sends each request as the bytes given (so a body may be anything); decodes replies as protobuf."""

    def encode(self, message: Any, message_type: type[Any]) -> bytes:
        assert isinstance(message, bytes)
        return message


class _Session:
    def __init__(
        self,
        target: Target,
        *,
        addr: str,
        exited: Callable[[], int | None],
        memory: Memory,
        report: Report,
        progress: Callable[[str], None],
    ) -> None:
        self.target = target
        self.addr = addr
        self.exited = exited
        self.memory = memory
        self.report = report
        self.progress = progress

    async def run(self) -> None:
        host, port = split_addr(self.addr)
        channel = Channel(host, port, codec=_Bodies())
        try:
            async with _probing(self.addr, self.report, self._gone):
                await self._fuzz(channel)
            if not self._gone():
                self.memory.running = "the checks after the run"
                self.report.still_serves = await self._still_serves(channel)
        finally:
            channel.close()

    async def _fuzz(self, channel: Channel) -> None:
        done: set[str] = set()
        if not self.target.stages:  # no model can be loaded here: every RPC meets the server unloaded
            rpcs = [rpc for rpc in self.target.unseeded if rpc in self.target.rpcs]
            if not await self._cases(channel, rpcs, {}):
                return
        for stage in self.target.stages:
            await self._load(channel, stage.model)
            self.report.loaded_rss = self.report.loaded_rss or self.memory.now()
            rpcs = [rpc for rpc in stage.seeds if rpc in self.target.rpcs and rpc not in done]
            if not done:
                rpcs += [rpc for rpc in self.target.unseeded if rpc in self.target.rpcs]
            done.update(rpcs)
            if not await self._cases(channel, rpcs, dict(stage.seeds)):
                return
        # Control RPCs last: a fuzzed LoadModel or Free changes what the RPCs above would meet.
        controls = [rpc for rpc in self.target.rpcs if rpc in CONTROL]
        await self._cases(channel, controls, _control_seeds(self.target))

    async def _load(self, channel: Channel, model: pb.ModelOptions) -> None:
        self.memory.running = f"LoadModel of the seed model {shown(model)}"
        status, message = await _call(channel, "LoadModel", model.SerializeToString(), 600, 1)
        self.memory.settle()
        if status != "OK":
            raise RuntimeError(f"{self.target.backend}: LoadModel({shown(model)}) failed: {status} {message}")

    async def _cases(self, channel: Channel, rpcs: Sequence[str], seeds: Mapping[str, Message]) -> bool:
        """Run the known cases of `rpcs`, then each one's generated cases; False once the server is gone
        or keeps hanging (nothing more to learn)."""
        makers = {rpc: Cases(self.target, rpc, seeds.get(rpc)) for rpc in rpcs}
        generated = (makers[rpc].next() for rpc in schedule(self.target, rpcs))
        for n, case in enumerate(itertools.chain(known_cases(self.target, rpcs), generated), 1):
            if not await self._run(channel, case):
                return False
            if n % 100 == 0:
                self.progress(f"{n} cases; {dict(self.report.statuses)}")
        return True

    async def _run(self, channel: Channel, case: Case) -> bool:
        self.memory.running = f"{case.rpc} {case.origin}: {case.shown}"
        started = time.monotonic()
        status, message = await _call(
            channel, case.rpc, case.body, self.target.deadline, self.target.max_replies
        )
        took = time.monotonic() - started
        self.memory.settle()
        if status == "DROPPED":
            await self._settle()
        if self.memory.killed:
            self.report.killed_by = Finding(case, status, message)
            return False
        if self._gone():
            self.report.crash = Finding(case, status, message)
            return False
        self.report.record(case, status, message, took)
        return len(self.report.hangs) < 3

    async def _settle(self, seconds: float = 2.0) -> None:
        """A dropped call may be the server dying: give its exit a moment to show before judging."""
        deadline = time.monotonic() + seconds
        while not self._gone() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)  # a poll of a bounded wait for the process to end

    def _gone(self) -> bool:
        return self.exited() is not None or bool(self.memory.killed)

    async def _still_serves(self, channel: Channel) -> list[str]:
        problems: list[str] = []
        async with connect(self.addr) as client:
            try:
                if not await client.healthy(timeout=1.0):
                    problems.append("Health did not answer OK")
            except (TimeoutError, GRPCError, OSError, StreamTerminatedError) as exc:
                problems.append(f"Health did not answer within 1 s ({type(exc).__name__})")
        for stage in self.target.stages:
            status, message = await _call(channel, "LoadModel", stage.model.SerializeToString(), 600, 1)
            if status != "OK":
                problems.append(f"LoadModel of the seed model: {status}: {message}")
                continue
            for rpc, seed in stage.seeds.items():
                status, message = await _call(channel, rpc, seed.SerializeToString(), 120, 10_000)
                if status != "OK":
                    problems.append(f"{rpc} seed request: {status}: {_cut(message, SHOWN)}")
        return problems


async def _call(
    channel: Channel, rpc: str, body: bytes, deadline: float, max_replies: int
) -> tuple[str, str]:
    """(status name, its message) of one call: "HANG" past the deadline, "DROPPED" when the server
    ended the call or connection without a status; a unary reply's success must also decode."""
    method: MethodDescriptor = SERVICE.methods_by_name[rpc]
    reply_type = getattr(pb, method.output_type.name)
    cardinality = _CARDINALITY[(method.client_streaming, method.server_streaming)]
    try:
        async with channel.request(
            f"/{SERVICE.full_name}/{rpc}", cardinality, bytes, reply_type, timeout=deadline
        ) as stream:
            await stream.send_message(body, end=True)
            replies = 0
            async for _ in stream:
                replies += 1
                if method.server_streaming and replies >= max_replies:
                    await _cancel(stream)
                    return "OK", f"cancelled after {replies} replies"
        return "OK", ""
    except GRPCError as exc:
        return exc.status.name, exc.message or ""
    except TimeoutError:
        return "HANG", f"no status within {deadline:g} s"
    except (StreamTerminatedError, ProtocolError, ConnectionError, OSError, DecodeError) as exc:
        return "DROPPED", f"{type(exc).__name__}: {exc}"


async def _cancel(stream: Any) -> None:
    """Enough read: the server must stop its work (the stream may have ended meanwhile: h2 says so)."""
    with contextlib.suppress(Exception):
        await stream.cancel()


@contextlib.asynccontextmanager
async def _probing(addr: str, report: Report, gone: Callable[[], bool]) -> AsyncIterator[None]:
    """Health on a connection of its own, every 0.2 s while the fuzzer runs: the event loop must keep
    answering whatever a request does (until the server is gone: that is reported apart)."""
    stop = asyncio.Event()

    async def probe() -> None:
        async with connect(addr) as client:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    ok = await client.healthy(timeout=PROBE_TIMEOUT)
                except (TimeoutError, GRPCError, OSError, StreamTerminatedError) as exc:
                    ok, problem = False, f"{type(exc).__name__} {exc}"
                else:
                    problem = "" if ok else "not OK"
                took = time.monotonic() - started
                if gone():
                    return
                report.health_probes += 1
                report.health_worst = max(report.health_worst, took)
                if not ok:
                    report.health_failures.append(f"after {report.messages} calls: {problem} ({took:.1f} s)")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.2)

    task = asyncio.create_task(probe())
    try:
        yield
    finally:
        stop.set()
        await task


class Memory:
    """The server's resident memory (with its children), sampled in a thread so a busy event loop here
    cannot miss a peak; a server past `kill_above` is killed, so a runaway cannot take the machine."""

    def __init__(self, pid: int, kill_above: int) -> None:
        self.process = psutil.Process(pid)
        self.kill_above = kill_above
        self.peak = 0
        self.killed = 0
        self.running = ""  # the call in flight (the fuzzer sets it), to say which one a peak came in
        self.peak_during = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="fuzz-rss", daemon=True)

    def __enter__(self) -> Memory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def now(self) -> int:
        try:
            return sum(p.memory_info().rss for p in [self.process, *self.process.children(recursive=True)])
        except psutil.Error:
            return 0

    def settle(self) -> None:
        """After a call: the kernel's high-water mark catches a peak the sampler slept through (a
        loaded machine can stall the sampling thread for longer than a short allocation lives)."""
        water = _high_water(self.process.pid)
        if water > self.peak:
            self.peak, self.peak_during = water, self.running

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            rss = self.now()
            if rss > self.peak:
                self.peak, self.peak_during = rss, self.running
            if rss > self.kill_above:
                self.killed = rss
                with contextlib.suppress(psutil.Error):
                    self.process.kill()
                return


def _high_water(pid: int) -> int:
    """The kernel's own peak RSS of the process (VmHWM), which no sampling misses; 0 where unreadable."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0
