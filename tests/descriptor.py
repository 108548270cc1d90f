"""Compile protos/backend.proto and describe it in the contract's JSON shape, for comparison."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parents[1]
PROTO = ROOT / "protos" / "backend.proto"

_TYPES = {v: k.removeprefix("TYPE_").lower() for k, v in descriptor_pb2.FieldDescriptorProto.Type.items()}
_LABELS = {v: k.removeprefix("LABEL_").lower() for k, v in descriptor_pb2.FieldDescriptorProto.Label.items()}


def compile_proto(tmp: Path) -> descriptor_pb2.FileDescriptorProto:
    out = tmp / "backend.pb"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"--proto_path={PROTO.parent}",
            f"--descriptor_set_out={out}",
            PROTO.name,
        ],
        check=True,
    )
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return files.file[0]


def describe(file: descriptor_pb2.FileDescriptorProto) -> dict[str, Any]:
    """Every message, field (name, number, type, label), enum and RPC, keyed so order does not matter."""
    messages: dict[str, Any] = {}

    def message(msg: descriptor_pb2.DescriptorProto) -> dict[str, Any]:
        fields = []
        for f in msg.field:
            entry: dict[str, Any] = {
                "name": f.name,
                "number": f.number,
                "type": _TYPES[f.type],
                "label": _LABELS[f.label],
            }
            if f.type_name:
                entry["type_name"] = f.type_name.lstrip(".")
            if f.proto3_optional:
                entry["proto3_optional"] = True
            elif f.HasField("oneof_index"):
                entry["oneof"] = msg.oneof_decl[f.oneof_index].name
            fields.append(entry)
        out: dict[str, Any] = {"fields": sorted(fields, key=_by_number)}
        nested = {
            n.name: message(n) | ({"map_entry": True} if n.options.map_entry else {}) for n in msg.nested_type
        }
        if nested:
            out["nested"] = nested
        enums = {e.name: {v.name: v.number for v in e.value} for e in msg.enum_type}
        if enums:
            out["enums"] = enums
        return out

    for msg in file.message_type:
        messages[msg.name] = message(msg)
    services = {
        s.name: sorted(
            (
                {
                    "name": m.name,
                    "input": m.input_type.lstrip("."),
                    "output": m.output_type.lstrip("."),
                    "client_streaming": m.client_streaming,
                    "server_streaming": m.server_streaming,
                }
                for m in s.method
            ),
            key=_by_name,
        )
        for s in file.service
    }
    return {
        "package": file.package,
        "syntax": file.syntax,
        "services": services,
        "messages": messages,
        "enums": {e.name: {v.name: v.number for v in e.value} for e in file.enum_type},
    }


def normalise(contract: dict[str, Any]) -> dict[str, Any]:
    """The contract JSON in the same order-free shape as describe()."""

    def message(msg: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"fields": sorted(msg["fields"], key=_by_number)}
        if msg.get("nested"):
            out["nested"] = {
                k: message(v) | ({"map_entry": True} if v.get("map_entry") else {})
                for k, v in msg["nested"].items()
            }
        if msg.get("enums"):
            out["enums"] = msg["enums"]
        return out

    return {
        "package": contract["package"],
        "syntax": contract["syntax"],
        "services": {k: sorted(v, key=_by_name) for k, v in contract["services"].items()},
        "messages": {k: message(v) for k, v in contract["messages"].items()},
        "enums": contract["enums"],
    }


def _by_name(entry: dict[str, Any]) -> str:
    return str(entry["name"])


def _by_number(entry: dict[str, Any]) -> int:
    return int(entry["number"])
