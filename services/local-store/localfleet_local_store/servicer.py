"""local-store: LocalAI's vector store (the stores API) as a thin servicer over the numpy engine.

Core starts one process per store namespace and loads it as `store://<name>`; stores requests carry no
model name, so this process serves one namespace at a time. Each namespace is kept apart: switching
to another and back finds the first intact, and Free never drops acknowledged data.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import AliasChoices, BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from localfleet import vectors
from localfleet.backend import Backend, ModelRef
from localfleet.call import Call
from localfleet.errors import BadInput
from localfleet.inputs import excerpt
from localfleet.options import BackendOptions
from localfleet.proto import backend_pb2 as pb

if TYPE_CHECKING:
    from localfleet_local_store.engine import VectorStore

log = logging.getLogger(__name__)

PREFIX = "store://"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

Sync = Literal["always", "os"]


class StoreSettings(BaseSettings):
    """Process-wide store settings (env), read when the backend starts."""

    model_config = SettingsConfigDict(env_prefix="LOCALFLEET_STORE_", extra="ignore")

    dir: str | None = Field(None, description="persist every store under DIR/<name>; memory only when unset")
    sync: Sync = Field("always", description="always: fsync before acknowledging; os: write to the OS only")
    # The runtime's LOCALFLEET_PATH_ROOTS: the other folders a store_dir option may name.
    path_roots: list[str] = Field(
        default_factory=list, validation_alias=AliasChoices("LOCALFLEET_PATH_ROOTS", "path_roots")
    )

    def allowed(self, store_dir: str) -> Path:
        """A LoadModel's store_dir, if it lies in a folder the operator allowed: a caller must not make
        the backend create files wherever it names."""
        folders = [Path(f).resolve() for f in ([self.dir] if self.dir else []) + self.path_roots]
        if not folders:
            raise BadInput(
                "the store_dir option is off until this backend's operator allows a folder: set "
                "LOCALFLEET_STORE_DIR (stores go under it) or LOCALFLEET_PATH_ROOTS on the backend"
            )
        wanted = Path(store_dir)
        resolved = wanted.resolve()
        if not wanted.is_absolute() or not any(resolved.is_relative_to(f) for f in folders):
            shown = ", ".join(str(f) for f in folders)
            raise BadInput(f"store_dir {excerpt(store_dir)} is not an absolute path inside {shown}")
        return resolved


class StoreOptions(BackendOptions):
    """Per-store LoadModel options (a store's `options:` in its model YAML)."""

    store_dir: str | None = None
    sync: Sync | None = None
    # flat: exact scan (default). hnsw: an approximate graph (usearch), kept right on every write and
    # saved beside a persistent store's files; Find then checks far fewer keys.
    index: Literal["flat", "hnsw"] = "flat"
    hnsw_m: int = Field(16, ge=2, le=256)
    hnsw_ef_construction: int = Field(128, ge=8, le=4096)
    hnsw_ef_search: int = Field(128, ge=1, le=65536)  # recall@10 0.97 at 1M x 384 (64: 0.92)
    # The graph's own copy of the vectors: candidates are re-ranked with the exact float32 keys, so f16
    # (half the memory, twice the build speed of f32) loses no recall; i8 halves it again.
    hnsw_dtype: Literal["f32", "f16", "i8"] = "f16"


class LocalStore(Backend):
    name = "local-store"
    Options = StoreOptions
    # Operations are short and the engine serialises writers itself; a few at once keeps readers moving.
    default_concurrency = 4

    def __init__(self) -> None:
        self.settings = StoreSettings()
        self._stores: dict[str, VectorStore] = {}
        self._persistent: dict[str, bool] = {}
        # Only load/unload/close change these, and the runtime runs those one at a time with no request
        # in flight (its model gate); Status reads them from another thread, so readers take snapshots.
        self._current: str | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def refuse(self, model: ModelRef) -> str | None:
        if not model.name.startswith(PREFIX):
            return f"it serves only stores, named {PREFIX}<name> (core adds the prefix for the stores API)"
        if not _NAME.match(model.name[len(PREFIX) :]):
            return "a store name is 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
        return None

    def load(self, model: ModelRef, options: BaseModel, request: pb.ModelOptions) -> str:
        from localfleet_local_store.ann import IndexConfig
        from localfleet_local_store.engine import VectorStore  # numpy: imported with the first store

        assert isinstance(options, StoreOptions)
        namespace = model.name[len(PREFIX) :]
        store = self._stores.get(namespace)
        index = IndexConfig(
            options.index,
            options.hnsw_m,
            options.hnsw_ef_construction,
            options.hnsw_ef_search,
            options.hnsw_dtype,
        )
        if store is not None:
            store.set_index(index)
            where = "kept from before"
        else:
            root = self.settings.allowed(options.store_dir) if options.store_dir else self.settings.dir
            directory = Path(root) / namespace if root else None
            store = VectorStore.open(directory, options.sync or self.settings.sync, index=index)
            self._persistent[namespace] = directory is not None
            self._stores[namespace] = store
            where = f"persisted in {directory}" if directory else "in memory only (set LOCALFLEET_STORE_DIR)"
        self._current = namespace
        return f"store {namespace!r}: {len(store)} keys, {where}, index {index.kind}"

    def unload(self) -> str:
        """Persistent stores are flushed and dropped from memory; memory-only stores must stay in memory."""
        namespace, self._current = self._current, None
        if namespace is None:
            return "no store loaded"
        if self._persistent[namespace]:
            self._stores.pop(namespace).close()
            del self._persistent[namespace]
            return f"store {namespace!r} flushed to disk and released"
        return f"store {namespace!r} kept in memory: it has no store_dir, so releasing it would lose its data"

    def close(self) -> None:
        for namespace, store in self._stores.items():
            if self._persistent[namespace]:
                store.close()
            elif len(store):
                log.warning(
                    "memory-only store %r loses its %d keys at exit; set LOCALFLEET_STORE_DIR to keep them",
                    namespace,
                    len(store),
                )
        self._stores.clear()
        self._persistent.clear()
        self._current = None

    def memory(self) -> dict[str, int]:
        return {"stores": sum(store.nbytes() for store in list(self._stores.values()))}

    def _store(self) -> VectorStore:
        assert self._current is not None  # the runtime admits requests only while a store is loaded
        return self._stores[self._current]

    # -- the stores API ------------------------------------------------------------------------
    async def StoresSet(self, request: pb.StoresSetOptions, call: Call) -> pb.Result:
        keys, values = vectors.set_input(request)
        await call.run(self._store().set, keys, values)
        return pb.Result(success=True, message=f"stored {len(values)} keys")

    async def StoresGet(self, request: pb.StoresGetOptions, call: Call) -> pb.StoresGetResult:
        found, values = await call.run(self._store().get, vectors.keys_array("StoresGet", request.Keys))
        return vectors.get_result(found, values)

    async def StoresDelete(self, request: pb.StoresDeleteOptions, call: Call) -> pb.Result:
        removed = await call.run(self._store().delete, vectors.keys_array("StoresDelete", request.Keys))
        return pb.Result(success=True, message=f"deleted {removed} keys")

    async def StoresFind(self, request: pb.StoresFindOptions, call: Call) -> pb.StoresFindResult:
        query = vectors.find_query(request)
        found, values, similarities = await call.run(self._store().find, query, request.TopK)
        return vectors.find_result(found, values, similarities)
