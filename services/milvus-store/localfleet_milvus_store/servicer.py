"""milvus-store: LocalAI's Stores API with its data in Milvus, as a thin servicer over the engine module.

Core starts one process per store namespace and loads it as `store://<name>`; each namespace is a
Milvus collection (`<collection_prefix><name>`, or the `collection` option). With no address the
backend runs embedded Milvus Lite under LOCALFLEET_MILVUS_DIR; with one (`uri` option or
LOCALFLEET_MILVUS_URI) it talks to that Milvus server or cluster with the same calls. Credentials come
from the environment (LOCALFLEET_MILVUS_TOKEN, or the variable `token_env` names) and are never logged.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from localfleet import vectors
from localfleet.backend import Backend, ModelRef
from localfleet.call import Call
from localfleet.errors import BadInput, Unavailable
from localfleet.options import BackendOptions
from localfleet.proto import backend_pb2 as pb

if TYPE_CHECKING:
    from localfleet_milvus_store.engine import Store

log = logging.getLogger(__name__)

PREFIX = "store://"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
TOKEN_ENV = "LOCALFLEET_MILVUS_TOKEN"
#: Milvus collection names: a letter or '_' first, then letters, digits and '_', at most 255
_COLLECTION = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")


class MilvusSettings(BaseSettings):
    """Process-wide settings (env), read when the backend starts."""

    model_config = SettingsConfigDict(env_prefix="LOCALFLEET_MILVUS_", extra="ignore")

    uri: str | None = Field(None, description="the Milvus server or cluster; embedded Milvus Lite when unset")
    dir: str | None = Field(None, description="the embedded engine's data folder; a temporary one when unset")


class MilvusOptions(BackendOptions):
    """Per-store LoadModel options (a store's `options:` in its model YAML)."""

    uri: str | None = Field(None, description="the Milvus address (overrides LOCALFLEET_MILVUS_URI)")
    token_env: str = Field(TOKEN_ENV, description="the variable holding 'user:password' or an API key")
    database: str = ""
    collection: str | None = Field(
        None, description="the collection; <collection_prefix><store name> if unset"
    )
    collection_prefix: str = "localfleet_"
    index: Literal["FLAT", "HNSW", "IVF_FLAT", "AUTOINDEX"] = "FLAT"
    metric: Literal["COSINE", "IP"] = Field("COSINE", description="IP: for keys the client normalises")
    hnsw_m: int = Field(16, ge=2, le=2048)
    ef_construction: int = Field(200, ge=1)
    ef: int = Field(64, ge=1, description="HNSW search breadth (at least TopK is used)")
    nlist: int = Field(128, ge=1)
    nprobe: int = Field(16, ge=1)
    consistency: Literal["Strong", "Bounded", "Session", "Eventually"] = "Strong"
    timeout: float = Field(10.0, gt=0, le=600, description="seconds one engine call may take")


def collection_name(namespace: str, prefix: str) -> str:
    """A valid, distinct Milvus name per store name: '_' doubles, '.' and '-' become '_d' and '_h'."""
    escaped = namespace.replace("_", "__").replace(".", "_d").replace("-", "_h")
    name = prefix + escaped
    if not _COLLECTION.match(name):
        raise BadInput(
            f"collection {name!r} (from the store name) is not a valid Milvus name: a letter or '_' first, "
            "then letters, digits or '_', at most 255; set the collection option"
        )
    return name


class MilvusStore(Backend):
    name = "milvus-store"
    Options = MilvusOptions
    # The engine does the work and pymilvus clients are thread-safe: several calls at once.
    default_concurrency = 8

    def __init__(self) -> None:
        self.settings = MilvusSettings()
        self._store: Store | None = None
        self._embedded: Path | None = None  # the embedded engine's data folder, once started
        self._temporary: str | None = None  # a folder made for it, removed at exit
        self._down: str | None = None  # the engine's address while the last call found it down

    # -- lifecycle -----------------------------------------------------------------------------
    def refuse(self, model: ModelRef) -> str | None:
        if not model.name.startswith(PREFIX):
            return f"it serves only stores, named {PREFIX}<name> (core adds the prefix for the stores API)"
        if not _NAME.match(model.name[len(PREFIX) :]):
            return "a store name is 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
        return None

    def load(self, model: ModelRef, options: BaseModel, request: pb.ModelOptions) -> str:
        from localfleet_milvus_store.engine import Config, Store  # pymilvus: imported with the first store

        assert isinstance(options, MilvusOptions)
        namespace = model.name[len(PREFIX) :]
        collection = options.collection or collection_name(namespace, options.collection_prefix)
        uri = options.uri or self.settings.uri or self._embedded_uri()
        config = Config(
            uri=uri,
            token=os.environ.get(options.token_env, ""),
            database=options.database,
            collection=collection,
            index=options.index,
            index_params=_index_params(options),
            search_params=_search_params(options),
            metric=options.metric,
            consistency=options.consistency,
            timeout=options.timeout,
        )
        self._store = Store.connect(config)
        self._down = None
        size = f"dimension {self._store.dim}" if self._store.dim else "empty"
        return f"store {namespace!r}: Milvus collection {collection!r} at {config.where} ({size})"

    def unload(self) -> str:
        store, self._store = self._store, None
        if store is None:
            return "no store loaded"
        store.close()
        return f"store in {store.config.collection!r} released (its data stays in Milvus)"

    def close(self) -> None:
        self.unload()
        if self._embedded is not None:
            from localfleet_milvus_store.engine import release_embedded

            release_embedded(self._embedded)
            self._embedded = None
        if self._temporary is not None:
            log.warning(
                "the embedded Milvus data in %s is removed at exit; set LOCALFLEET_MILVUS_DIR",
                self._temporary,
            )
            shutil.rmtree(self._temporary, ignore_errors=True)
            self._temporary = None

    def unable(self) -> str | None:
        return f"the Milvus engine at {self._down} is unreachable" if self._down else None

    def _embedded_uri(self) -> str:
        """Embedded Milvus Lite, one per process, under LOCALFLEET_MILVUS_DIR (or a temporary folder)."""
        if self._embedded is None:
            if self.settings.dir:
                folder = Path(self.settings.dir)
            else:
                self._temporary = tempfile.mkdtemp(prefix="localfleet-milvus-")
                folder = Path(self._temporary)
                # Said at the start, not only at exit: an operator must know before storing anything.
                log.warning(
                    "no engine address and no LOCALFLEET_MILVUS_DIR: stores live in %s, removed at "
                    "exit; set LOCALFLEET_MILVUS_DIR (or a uri) to keep them",
                    folder,
                )
            folder.mkdir(parents=True, exist_ok=True)
            self._embedded = folder / "milvus.db"  # pymilvus starts Milvus Lite for a path ending .db
        return str(self._embedded)

    def _current(self) -> Store:
        assert self._store is not None  # the runtime admits requests only while a store is loaded
        return self._store

    async def _run(self, call: Call, fn: Any, *args: Any) -> Any:
        store = self._current()
        try:
            result = await call.run(fn, *args)
        except Unavailable:
            self._down = store.config.where
            raise
        self._down = None
        return result

    # -- the stores API ------------------------------------------------------------------------
    async def StoresSet(self, request: pb.StoresSetOptions, call: Call) -> pb.Result:
        keys, values = vectors.set_input(request)
        await self._run(call, self._current().set, keys, values)
        return pb.Result(success=True, message=f"stored {len(values)} keys")

    async def StoresGet(self, request: pb.StoresGetOptions, call: Call) -> pb.StoresGetResult:
        found, values = await self._run(
            call, self._current().get, vectors.keys_array("StoresGet", request.Keys)
        )
        return vectors.get_result(found, values)

    async def StoresDelete(self, request: pb.StoresDeleteOptions, call: Call) -> pb.Result:
        removed = await self._run(
            call, self._current().delete, vectors.keys_array("StoresDelete", request.Keys)
        )
        return pb.Result(success=True, message=f"deleted {removed} keys (those present)")

    async def StoresFind(self, request: pb.StoresFindOptions, call: Call) -> pb.StoresFindResult:
        query = vectors.find_query(request)
        found, values, similarities = await self._run(call, self._current().find, query, request.TopK)
        return vectors.find_result(found, values, similarities)


def _index_params(options: MilvusOptions) -> dict[str, Any]:
    if options.index == "HNSW":
        return {"M": options.hnsw_m, "efConstruction": options.ef_construction}
    if options.index == "IVF_FLAT":
        return {"nlist": options.nlist}
    return {}


def _search_params(options: MilvusOptions) -> dict[str, Any]:
    if options.index == "HNSW":
        return {"ef": options.ef}
    if options.index == "IVF_FLAT":
        return {"nprobe": options.nprobe}
    return {}
