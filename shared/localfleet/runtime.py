"""The runtime: one per process. Owns the model's lifecycle, admission, readiness, drain and metrics."""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

from grpclib.health.check import ServiceStatus
from pydantic import BaseModel

from localfleet import memory
from localfleet.admission import Admission
from localfleet.backend import Backend, ModelRef
from localfleet.call import Call
from localfleet.errors import BackendError, NotFound, NotLoaded, Refused, Unavailable
from localfleet.gate import ModelGate
from localfleet.inputs import excerpt
from localfleet.metrics import Metrics
from localfleet.options import parse_options
from localfleet.paths import PathPolicy, name_refusal
from localfleet.proto import backend_pb2 as pb
from localfleet.settings import Settings
from localfleet.workers import Workers

log = logging.getLogger(__name__)


class State(enum.Enum):
    UNINITIALIZED = pb.StatusResponse.UNINITIALIZED
    READY = pb.StatusResponse.READY
    ERROR = pb.StatusResponse.ERROR
    LOADING = pb.StatusResponse.BUSY  # the contract has no LOADING: a load in progress shows as BUSY


@dataclass(frozen=True)
class _Served:
    """What loaded the model now served, to load it again."""

    ref: ModelRef
    options: BaseModel
    request: pb.ModelOptions
    limits: Mapping[str, int]


class Runtime:
    def __init__(self, backend: Backend, settings: Settings) -> None:
        self.backend = backend
        self.settings = settings
        limit = settings.concurrency or backend.default_concurrency
        self.metrics = Metrics(backend.name)
        self.admission = Admission(
            limit,
            settings.queue_size,
            groups=set(backend.limit_groups.values()),
            on_depth=self.metrics.queue_depth.set,
        )
        # Engine work, plus room for a load and a Free beside a full set of running calls.
        self.executor = Workers(max_workers=limit + 2, thread_name_prefix=f"{backend.name}-work")
        self.gate = ModelGate()
        self.paths = PathPolicy(settings.path_roots)
        self.state = State.UNINITIALIZED
        self.model_name = ""
        self.last_error = ""
        #: the model a LoadModel is loading now, and since when (monotonic), for the calls that wait
        self.loading = ""
        self.loading_since = 0.0
        #: the request that loaded the model now served: restored if a replacement fails to load
        self._served: _Served | None = None
        #: grpc.health.v1 status: what a Kubernetes readiness probe reads
        self.readiness = ServiceStatus()
        self.readiness.set(settings.model is None)
        self.draining = False
        self.in_flight = 0
        self.calls: set[Call] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    # -- bookkeeping of calls, for drain and Status --------------------------------------------
    def call_started(self) -> None:
        if self.draining:
            raise Unavailable("this backend is shutting down (draining); retry on another instance")
        self.in_flight += 1
        self._idle.clear()
        self.metrics.in_flight.set(self.in_flight)

    def call_ended(self) -> None:
        self.in_flight -= 1
        self.metrics.in_flight.set(self.in_flight)
        if self.in_flight == 0:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        if self._idle.is_set():
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def stop_calls(self) -> None:
        """Grace period over: tell every engine loop to stop; their callers get UNAVAILABLE."""
        for call in self.calls:
            call.shutdown = True
            call.stop.set()

    def begin_drain(self) -> None:
        self.draining = True
        self.readiness.set(False)

    # -- checks every request goes through ------------------------------------------------------
    def check_identity(self, identity: str) -> None:
        if identity and identity != self.model_name:
            loaded = excerpt(self.model_name) if self.model_name else "no model"
            raise NotFound(
                f"model identity mismatch: the request is for {excerpt(identity)} but this backend has "
                f"{loaded} loaded; call LoadModel for that model first"
            )

    def require_model(self) -> None:
        if self.state is not State.READY:
            if self.state is State.LOADING:
                waited = time.monotonic() - self.loading_since
                raise Unavailable(
                    f"model {excerpt(self.loading)} is loading (for {waited:.0f} s so far); retry once it "
                    "is loaded (grpc.health.v1 says SERVING, Status says READY)"
                )
            if self.state is State.ERROR:
                raise NotLoaded(
                    f"no model loaded: the last LoadModel failed ({self.last_error}); call LoadModel again"
                )
            raise NotLoaded()

    async def _name_refusal(self, request: pb.ModelOptions, ref: ModelRef) -> str | None:
        """Why LoadModel's names cannot be opened here at all, or None."""
        if not ref.name and not ref.path:
            return "LoadModel needs Model (the model name or file)"
        unusable = name_refusal(request.Model, "Model") or name_refusal(request.ModelFile, "ModelFile")
        if unusable:
            return f"{self.backend.name}: {unusable}"
        # A stat of a client's path (maybe on a hung network mount): off the loop, as refuse() below.
        outside = await asyncio.get_running_loop().run_in_executor(
            self.executor, self.paths.model_refusal, ref.path, self.settings.model_path or None
        )
        if outside:
            log.info("refused model %s: %s", excerpt(ref.name), outside)
            return f"{self.backend.name}: {outside}"
        return None

    # -- the control RPCs ------------------------------------------------------------------------
    async def load(self, request: pb.ModelOptions) -> pb.Result:
        """LoadModel: refuse fast what this backend cannot serve, else replace the model in a thread."""
        ref = ModelRef.from_request(request)
        refused = await self._name_refusal(request, ref)
        if refused:
            return pb.Result(success=False, message=refused)
        try:
            options = parse_options(self.backend.Options, request.Options)
            limits = self.backend.group_limits(options)
            self.admission.check(limits)
            # Checks that touch the file system (a model file's magic, a voices folder): off the loop.
            reason = await asyncio.get_running_loop().run_in_executor(self.executor, self.backend.refuse, ref)
        except (BackendError, ValueError) as exc:
            return pb.Result(success=False, message=f"{self.backend.name}: {exc}")
        if reason:
            log.info("refused model %s: %s", excerpt(ref.name), reason)
            return pb.Result(
                success=False, message=f"{self.backend.name} cannot serve {excerpt(ref.name)}: {reason}"
            )
        loop = asyncio.get_running_loop()
        async with self.gate.exclusive():
            started = time.perf_counter()
            previous = self._served if self.model_name else None
            self._loading(ref.name)
            unloaded: str | None = None  # why the serving model was released before the load, if it was
            try:
                # No call runs now; queued ones get the new model's limits (Ticket.settle).
                self.admission.resize(limits)
                if previous is not None:
                    beside = self.backend.beside_refusal
                    unloaded = await loop.run_in_executor(self.executor, beside, ref, request)
                if previous is not None and unloaded:
                    log.info("releasing %s before the load: %s", excerpt(previous.ref.name), unloaded)
                    await loop.run_in_executor(self.executor, self._release)
                    self.model_name = ""
                memory.thaw_model()  # a model this load replaces must be collectable once dropped
                message = await loop.run_in_executor(self.executor, self.backend.load, ref, options, request)
            except (Exception, Refused) as exc:  # any engine failure is the load's answer, never a crash
                failure = self._load_failed(ref, exc)
                if previous is not None:
                    failure += self._kept(previous) if self.model_name else await self._restore(previous)
                    await loop.run_in_executor(self.executor, memory.freeze_model)
                return pb.Result(success=False, message=failure)
            await loop.run_in_executor(self.executor, memory.freeze_model)
            if unloaded and previous is not None:
                message += f" ({excerpt(previous.ref.name)} was released first: {unloaded})"
            elapsed = time.perf_counter() - started
            self.metrics.load_seconds.observe(elapsed)
            self._served = _Served(ref, options, request, limits)
            self._ready(ref.name)
            log.info("loaded %s in %.2f s: %s", excerpt(ref.name), elapsed, message)
            return pb.Result(success=True, message=message or f"loaded {ref.name}")

    def _loading(self, name: str) -> None:
        self.state = State.LOADING
        self.loading = name
        self.loading_since = time.monotonic()

    def _ready(self, name: str) -> None:
        self.state = State.READY
        self.model_name = name
        self.last_error = ""

    def _load_failed(self, ref: ModelRef, exc: BaseException) -> str:
        self.state = State.ERROR
        self.last_error = _describe(exc)
        if isinstance(exc, BackendError | Refused):
            log.warning("LoadModel %s failed: %s", excerpt(ref.name), exc)
        else:
            log.exception("LoadModel %s failed", excerpt(ref.name))
        return f"{self.backend.name}: loading {excerpt(ref.name)} failed: {self.last_error}"

    def _kept(self, served: _Served) -> str:
        """After a failed load beside the serving model: that model serves on, untouched."""
        self.admission.resize(served.limits)
        self._ready(served.ref.name)
        return f"; {excerpt(served.ref.name)} serves on (the load was tried beside it)"

    async def _restore(self, served: _Served) -> str:
        """After a failed replacement, load the model that served before: a bad LoadModel costs its
        caller an error, not every other caller their model. The old model was released first (see
        Backend.beside_refusal), so this costs one more load of it."""
        name = excerpt(served.ref.name)
        log.info("loading %s again after the failed load", name)
        self._loading(served.ref.name)
        try:
            self.admission.resize(served.limits)
            await asyncio.get_running_loop().run_in_executor(
                self.executor, self.backend.load, served.ref, served.options, served.request
            )
        except (Exception, Refused) as exc:
            error = self.last_error
            self._load_failed(served.ref, exc)
            self.last_error = error  # the failure the caller asked about stays the one reported
            return f"; loading {name} again failed too ({_describe(exc)}), so no model is loaded"
        self._ready(served.ref.name)
        return f"; {name}, loaded before, was loaded again and serves on"

    async def free(self) -> pb.Result:
        """Free: drop the model and give its memory back; Status returns to UNINITIALIZED."""
        loop = asyncio.get_running_loop()
        async with self.gate.exclusive():
            if not self.model_name:
                self.state = State.UNINITIALIZED
                return pb.Result(success=True, message="no model loaded")
            name = self.model_name
            message = await loop.run_in_executor(self.executor, self._release)
            self.model_name = ""
            self.state = State.UNINITIALIZED
            log.info("freed %s: %s", excerpt(name), message)
            return pb.Result(success=True, message=message or f"freed {name}")

    def _release(self) -> str:
        """The backend's unload, then its memory handed back (blocking): the C heap keeps what the
        engine's runs freed (activations: hundreds of MB) unless trimmed, and torch keeps GPU blocks
        cached for reuse unless emptied."""
        memory.thaw_model()
        message = self.backend.unload()
        memory.trim_heap()  # collects cycles first
        memory.release_device_caches()
        return message

    def status(self) -> pb.StatusResponse:
        try:
            figures = memory.process_memory()
            figures.update(self.backend.memory() if self.state is State.READY else {})
        except Exception:  # Status must answer even when an engine cannot count its memory
            log.exception("memory figures failed")
            figures = {"rss": memory.rss()}
        total = figures.get("rss", 0) + sum(v for k, v in figures.items() if k.startswith("gpu"))
        state = self.state.value
        if self.state is State.READY and self.admission.running:
            state = pb.StatusResponse.BUSY
        if self.state is State.READY and self.backend.unable():  # a remote engine that is down
            state = pb.StatusResponse.ERROR
        return pb.StatusResponse(state=state, memory=pb.MemoryUsageData(total=total, breakdown=figures))

    async def load_startup_model(self) -> None:
        settings = self.settings
        assert settings.model is not None
        request = pb.ModelOptions(
            Model=settings.model,
            ModelPath=settings.model_path,
            ModelFile=f"{settings.model_path.rstrip('/')}/{settings.model}" if settings.model_path else "",
            Options=settings.model_options,
        )
        result = await self.load(request)
        if result.success:
            self.readiness.set(not self.draining)
        else:
            log.error("start-up model did not load; not ready: %s", result.message)

    async def close(self, wait: float | None = None) -> bool:
        """At exit: let the backend flush what must survive (a store's data), then stop the workers.

        False when a LoadModel still holds the model after `wait` s: its thread cannot be interrupted,
        so the process must exit without joining it (`abandoned`)."""
        loop = asyncio.get_running_loop()
        try:
            async with self.gate.exclusive(timeout=wait):
                try:
                    await loop.run_in_executor(self.executor, self.backend.close)
                except Exception:
                    log.exception("backend close failed")
                self.model_name = ""
                self.state = State.UNINITIALIZED
        except TimeoutError:
            log.warning("loading %s is still running; exiting without waiting for it", excerpt(self.loading))
            return False
        finally:
            self.executor.shutdown(wait=False, cancel_futures=True)
        return True


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BackendError | Refused):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
