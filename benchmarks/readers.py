"""Clients outside the benchmark's Python process: grpc-go programs (LocalAI core's own kind of client,
a new connection per call) and curl (libcurl and nghttp2, in C), so the reader's cost is not Python's."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

GO = Path(__file__).parent / "go"
#: Debian's golang-google-grpc-dev, built in GOPATH mode (no module downloads offline)
GOPATH = Path("/usr/share/gocode")


def go_program(folder: str, name: str) -> Path | None:
    """The Go program in benchmarks/go/`folder` built as `name`; None without Go or its gRPC package."""
    go = shutil.which("go")
    if go is None or not (GOPATH / "src" / "google.golang.org" / "grpc").is_dir():
        return None
    out = Path(tempfile.gettempdir()) / "localfleet-bench" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GOPATH": str(GOPATH), "GO111MODULE": "off"}
    env.setdefault("GOCACHE", str(out.parent / "go-cache"))
    command = [go, "build", "-o", str(out), "."]
    built = subprocess.run(command, cwd=GO / folder, env=env, capture_output=True, text=True, check=False)
    if built.returncode != 0:
        print(f"the Go program {name} did not build: {built.stderr.strip()[:300]}")
        return None
    return out


def curl_reads() -> bool:
    """Whether this machine's curl speaks HTTP/2 without TLS."""
    curl = shutil.which("curl")
    if curl is None:
        return False
    version = subprocess.run([curl, "--version"], capture_output=True, text=True, check=False).stdout
    return "HTTP2" in version
