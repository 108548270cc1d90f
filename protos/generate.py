"""Regenerate the committed Python code for backend.proto (run by `nox -s protos`).

The virtual proto path makes the generated imports `localfleet.proto.backend_pb2`, so the code lives
once, in the common package, and needs no import rewriting.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]


def generate(out: Path) -> None:
    args = [
        "protoc",
        f"--proto_path=localfleet/proto={ROOT / 'protos'}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpclib_python_out={out}",
        "localfleet/proto/backend.proto",
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "shared")
