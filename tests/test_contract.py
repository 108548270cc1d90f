"""The proto is LocalAI's wire contract, and the committed generated code matches the proto."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.descriptor import ROOT, compile_proto, describe, normalise

GOLDEN = ROOT / "tests" / "golden" / "backend_descriptor.json"
CONTRACT = ROOT.parent / "shared" / "contract" / "localai-backend.json"


def test_proto_matches_golden_descriptor(tmp_path: Path) -> None:
    described = describe(compile_proto(tmp_path))
    golden = json.loads(GOLDEN.read_text())
    assert described["services"] == golden["services"]
    for name, message in golden["messages"].items():
        assert described["messages"].get(name) == message, f"message {name} differs from the golden snapshot"
    assert described == golden


def test_proto_declares_the_whole_contract(tmp_path: Path) -> None:
    described = describe(compile_proto(tmp_path))
    assert len(described["services"]["Backend"]) == 52
    assert len(described["messages"]) == 114
    if not CONTRACT.exists():
        pytest.skip(f"{CONTRACT} not beside this checkout; the golden snapshot still guards the wire format")
    assert described == normalise(json.loads(CONTRACT.read_text()))


def test_committed_generated_code_is_current(tmp_path: Path) -> None:
    # protos/generate.py: the same code `nox -s protos` runs
    spec = importlib.util.spec_from_file_location("generate", ROOT / "protos" / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.generate(tmp_path)
    for name in ("backend_pb2.py", "backend_pb2.pyi", "backend_grpc.py"):
        fresh = (tmp_path / "localfleet" / "proto" / name).read_text()
        committed = (ROOT / "shared" / "localfleet" / "proto" / name).read_text()
        assert fresh == committed, f"{name} is stale: run `nox -s protos` and commit the result"
