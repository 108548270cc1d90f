"""A backend for testing the runtime itself: real threads, real stop flags, controllable timing.

Served in-process by the tests and as `localfleet serve tests.runtime.workbench:Workbench` in a
subprocess (signals, drain, parent death). Its work is counting in a worker thread, checking the stop
flag between steps like a real engine between tokens.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterator

from pydantic import BaseModel

from localfleet.backend import Backend, ModelRef
from localfleet.call import Call
from localfleet.errors import BadInput, EngineFailure, Refused
from localfleet.options import BackendOptions
from localfleet.proto import backend_pb2 as pb

STEP = 0.01  # seconds per "token"


class WorkbenchOptions(BackendOptions):
    load_seconds: float = 0.0
    fail: bool = False
    vocab: int = 100


class Workbench(Backend):
    name = "workbench"
    Options = WorkbenchOptions
    default_concurrency = 1

    def __init__(self) -> None:
        self.loaded: str | None = None
        self.options = WorkbenchOptions()
        self.started = threading.Event()  # set when a Predict's work begins
        self.stopped_early = threading.Event()  # set when work saw the stop flag
        self.finished = 0
        self.unloads = 0
        self.load_started = threading.Event()
        self.release_load = threading.Event()  # a test clears it to hold a load in progress
        self.release_load.set()

    def refuse(self, model: ModelRef) -> str | None:
        return "it only serves workbench models" if model.name.startswith("other/") else None

    def load(self, model: ModelRef, options: BaseModel, request: pb.ModelOptions) -> str:
        assert isinstance(options, WorkbenchOptions)
        self.load_started.set()
        deadline = time.monotonic() + options.load_seconds
        while time.monotonic() < deadline:
            time.sleep(STEP)
        self.release_load.wait()
        if options.fail:
            raise EngineFailure("the workbench was told to fail")
        if model.path.endswith(".bad"):
            raise Refused(f"{model.path} is not a workbench file")
        self.loaded, self.options = model.path, options
        return f"workbench ready with {model.path}"

    def unload(self) -> str:
        self.loaded = None
        self.unloads += 1
        return "workbench emptied"

    def memory(self) -> dict[str, int]:
        return {"workbench": 1234}

    def _work(self, steps: int, call: Call) -> int:
        self.started.set()
        done = 0
        for _ in range(steps):
            if call.stop.is_set():
                self.stopped_early.set()
                break
            time.sleep(STEP)
            done += 1
        else:
            self.finished += 1
        return done

    def _stream(self, steps: int, call: Call) -> Iterator[int]:
        self.started.set()
        try:
            for step in range(steps):
                if call.stop.is_set():
                    self.stopped_early.set()
                    return
                time.sleep(STEP)
                yield step
        except GeneratorExit:  # closed by the runtime after the stop flag was seen between items
            self.stopped_early.set()
            raise
        self.finished += 1

    async def Predict(self, request: pb.PredictOptions, call: Call) -> pb.Reply:
        if request.Tokens < 0:
            raise BadInput(f"Tokens must be >= 0, got {request.Tokens}")
        if request.Prompt == "crash":
            raise RuntimeError("engine blew up")
        done = await call.run(self._work, request.Tokens, call)
        return pb.Reply(message=f"{request.Prompt}:{done}".encode(), tokens=done)

    async def PredictStream(self, request: pb.PredictOptions, call: Call) -> AsyncIterator[pb.Reply]:
        async for step in call.iterate(self._stream, request.Tokens, call):
            call.count_tokens(1)
            yield pb.Reply(message=f"{step} ".encode(), tokens=step + 1)

    async def Embedding(self, request: pb.PredictOptions, call: Call) -> pb.EmbeddingResult:
        size = len(request.Embeddings)
        return pb.EmbeddingResult(
            embeddings=[float(size)] * size
        )  # 4 bytes a float: the reply outgrows the request
