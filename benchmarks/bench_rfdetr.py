"""rfdetr's Detect through gRPC against the same engine call in-process, for both engines.

    python benchmarks/bench_rfdetr.py [--runs 10]

Models: a real YOLOv8n ONNX detector (nudenet's 320n.onnx, from the test extra) and RF-DETR Nano with
random weights (`pretrained:false`: no weights install offline; the work per image is the real model's).
The image is scikit-image's astronaut photograph (512x512 PNG), sent as base64 as core sends it (about
1 MB of request). The backend runs as a real `localfleet serve rfdetr` process; its time includes
decoding the base64 PNG. The floor is the same work in this process: decode the same base64 with
localfleet.pictures, then the engine (YoloOnnx.detect, rfdetr's predict).

The call is made by a reader in its own process, as core makes it (a new connection per call), so the
reader's CPU is not this process's and the floor is not measured beside a Python client's work:
- Go (benchmarks/go/unary on grpc-go, built here when Debian's golang-go and golang-google-grpc-dev are
  installed): core's own client library, timed from dial to the reply read; the target (>= 0.97) is its.
- curl (libcurl and nghttp2, in C), timed by curl itself (connect to the reply's end): the target's
  reader without Go.
- grpclib in this Python process (--grpclib): a heavy reader (Python h2 sends the megabyte), for
  comparison.
Each round runs every side once, in a shuffled order; a ratio is the median of the rounds' ratios.

Also printed: the server's RSS before LoadModel, after it, after detecting and after Free.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import psutil

from localfleet import pictures
from localfleet.client import connect
from localfleet.proto import backend_pb2 as pb
from localfleet.testing import spawn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # benchmarks.readers, beside this script

from benchmarks.readers import curl_reads, go_program  # noqa: E402 (after the path above)

MiB = 1024 * 1024
RANDOM_NANO = ["pretrained:false", "num_classes:3", "device:cpu"]


DETECT = "/backend.Backend/Detect"


async def through_grpclib(addr: str, request: pb.DetectOptions) -> float:
    started = time.perf_counter()
    async with connect(addr) as client:
        reply = await client.backend.Detect(request)
    elapsed = time.perf_counter() - started
    assert reply is not None
    return elapsed


def through_go(reader: Path, addr: str, request: bytes) -> float:
    """One Detect made by grpc-go as core makes it: seconds from dial to the reply read."""
    out = subprocess.run([str(reader), addr, DETECT], input=request, capture_output=True, check=True).stdout
    return float(json.loads(out)["seconds"])


def through_curl(addr: str, request: bytes) -> float:
    """One Detect made by curl (nghttp2, in C): curl's own transfer time, connect to the reply's end
    (its process start-up left out)."""
    body = b"\x00" + struct.pack(">I", len(request)) + request  # gRPC framing: uncompressed, length
    with tempfile.NamedTemporaryFile() as out, tempfile.NamedTemporaryFile("r") as headers:
        elapsed = subprocess.run(
            ["curl", "--silent", "--show-error", "--http2-prior-knowledge", "--data-binary", "@-",
             "-H", "content-type: application/grpc", "-H", "te: trailers", "--output", out.name,
             "--dump-header", headers.name, "--write-out", "%{time_total}", f"http://{addr}{DETECT}"],
            input=body, capture_output=True, check=True,
        ).stdout  # fmt: skip
        status = [line for line in headers.read().splitlines() if line.startswith("grpc-status:")]
        assert status == ["grpc-status: 0"], f"curl's call ended with {status}"
        reply = Path(out.name).read_bytes()
    (size,) = struct.unpack(">I", reply[1:5])
    pb.DetectResponse.FromString(reply[5 : 5 + size])
    return float(elapsed)


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def imports_alone(modules: str) -> int:
    """RSS of a fresh process that only imports what LoadModel imports: memory Free cannot give back."""
    import subprocess
    import sys

    code = f"import psutil, {modules}; print(psutil.Process().memory_info().rss)"
    return int(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    )


async def measure(
    name: str,
    model: pb.ModelOptions,
    bare: Callable[[], object],
    *,
    request: pb.DetectOptions,
    runs: int,
    modules: str,
    grpclib: bool,
) -> None:
    wire = request.SerializeToString()
    reader = go_program("unary", "go-unary")
    with spawn("rfdetr", env={"HF_HUB_OFFLINE": "1"}, timeout=60) as process:
        addr = process.addr
        server = psutil.Process(process.popen.pid)
        rss = {"before LoadModel": server.memory_info().rss}
        async with connect(addr) as client:
            loaded = await client.backend.LoadModel(model)
            assert loaded.success, loaded.message
        rss["after LoadModel"] = server.memory_info().rss
        readers: dict[str, Callable[[], Awaitable[float]]] = {}
        if reader is not None:
            readers["Go"] = lambda: asyncio.to_thread(through_go, reader, addr, wire)
        if curl_reads():
            readers["curl"] = lambda: asyncio.to_thread(through_curl, addr, wire)
        if grpclib or not readers:
            readers["grpclib"] = lambda: through_grpclib(addr, request)
        target = next(iter(readers))
        for _ in range(2):  # warm-up: first-call allocations on both sides
            for read in readers.values():
                await read()
            bare()
        rounds: list[dict[str, float]] = []
        for _ in range(runs):
            order = [*readers, "in-process"]
            random.shuffle(order)
            took: dict[str, float] = {}
            for side in order:
                took[side] = timed(bare) if side == "in-process" else await readers[side]()
            rounds.append(took)
        rss["after Detect"] = server.memory_info().rss
        async with connect(addr) as client:
            await client.backend.Free(pb.HealthMessage())
        rss["after Free"] = server.memory_info().rss
    print(f"{name}, {runs} rounds, a {len(wire) / 1e6:.2f} MB request")
    bare_s = statistics.median(r["in-process"] for r in rounds)
    print(f"  decode + engine in-process:                      {bare_s * 1000:8.1f} ms")
    for side in readers:
        grpc_s = statistics.median(r[side] for r in rounds)
        ratios = sorted(r["in-process"] / r[side] for r in rounds)
        goal = "   target >= 0.97" if side == target else ""
        print(
            f"  Detect through gRPC, {side + ' reader':14} (PNG decoded): {grpc_s * 1000:8.1f} ms   ratio "
            f"{statistics.median(ratios):.3f} (rounds {ratios[0]:.3f}-{ratios[-1]:.3f}){goal}"
        )
    print("  server RSS: " + ", ".join(f"{k} {v / MiB:.0f} MiB" for k, v in rss.items()))
    freed = (rss["after Free"] - rss["before LoadModel"]) / MiB
    print(f"  RSS after Free - before LoadModel: {freed:+.0f} MiB")
    print(f"  RSS of a process that only imports {modules}: {imports_alone(modules) / MiB:.0f} MiB")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--grpclib", action="store_true", help="also call from this process with grpclib")
    opts = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import importlib.util

    import skimage

    photo = Path(skimage.__file__).parent / "data" / "astronaut.png"
    src = base64.b64encode(photo.read_bytes()).decode()
    spec = importlib.util.find_spec("nudenet")  # its file, without importing it (and OpenCV)
    assert spec is not None, "pip install nudenet (the test extra)"
    assert spec.submodule_search_locations
    onnx = str(Path(next(iter(spec.submodule_search_locations))) / "320n.onnx")
    print(f"load average before: {os.getloadavg()[0]:.2f} (2 cores: quiet is < 0.5)")

    from localfleet_rfdetr.yolo import Settings, YoloOnnx

    yolo = YoloOnnx(Settings(onnx, None, 0.7, None, 0, None))

    def bare_yolo() -> object:
        return yolo.detect(pictures.from_base64(src, "src"), 0.25)

    modules = "onnxruntime, numpy, PIL.Image, localfleet_rfdetr.yolo"
    await measure(
        "YOLOv8n ONNX (nudenet 320n.onnx)",
        pb.ModelOptions(Model=onnx),
        bare_yolo,
        request=pb.DetectOptions(src=src, threshold=0.25),
        modules=modules,
        runs=opts.runs,
        grpclib=opts.grpclib,
    )

    from rfdetr import RFDETRNano

    nano = RFDETRNano(pretrain_weights=None, num_classes=3, device="cpu")

    def bare_nano() -> object:
        return nano.predict(pictures.from_base64(src, "src"), threshold=0.5, include_source_image=False)

    model = pb.ModelOptions(Model="rfdetr-nano", Options=RANDOM_NANO)
    modules = "torch, rfdetr, supervision, PIL.Image, localfleet_rfdetr.detr"
    await measure(
        "RF-DETR Nano (random weights)",
        model,
        bare_nano,
        request=pb.DetectOptions(src=src, threshold=0.5),
        modules=modules,
        runs=opts.runs,
        grpclib=opts.grpclib,
    )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
