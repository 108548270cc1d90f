"""One store as a Milvus collection, through pymilvus (the only module that imports it).

A row per key: ``id`` (the SHA-256 of the key's float32 bytes: a key's identity is its exact bytes, as
in local-store, and a fixed-size primary key whatever the dimension), ``key`` (the vector as given, which
Milvus hands back bit for bit) and ``value`` (the bytes, base64: Milvus has no bytes field). Set is
Milvus's upsert on that id, so one StoresSet is one engine call: the engine applies it whole or refuses it.

Everything a request can get wrong is checked here before the engine is called, so a rejected batch
never reaches it. The collection's dimension is fixed by Milvus; as in local-store, a store that holds
no keys takes a new dimension (the empty collection is made again with it).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import numpy.typing as npt
from pymilvus import DataType, MilvusClient  # type: ignore[import-untyped]

from localfleet.errors import (
    BackendError,
    BadInput,
    EngineFailure,
    TimedOut,
    Unauthenticated,
    Unavailable,
)

F32Array = npt.NDArray[np.float32]

log = logging.getLogger(__name__)
# pymilvus logs each failed call with a traceback; the backend reports them itself, as typed errors.
logging.getLogger("pymilvus").setLevel(logging.CRITICAL)

#: Milvus's largest search limit (its proxy's default maxTopK)
MAX_TOP_K = 16384
#: a value's base64 must fit Milvus's largest VARCHAR (65,535 bytes)
MAX_VALUE_BYTES = 65535 // 4 * 3
#: ids are sent in groups this size (pymilvus makes an `id in [...]` expression of each)
_ID_CHUNK = 4096


# A channel of its own per client (gRPC otherwise shares one per address, with its reconnect backoff, so
# a fresh client would wait that out too) and a short backoff: back as soon as the engine is.
_GRPC_OPTIONS = {
    "grpc.use_local_subchannel_pool": 1,
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 1000,
}


@dataclass(frozen=True)
class Config:
    uri: str
    token: str = field(default="", repr=False)  # never printed
    database: str = ""
    collection: str = "localfleet_default"
    index: str = "FLAT"
    index_params: dict[str, Any] = field(default_factory=dict)
    search_params: dict[str, Any] = field(default_factory=dict)
    metric: str = "COSINE"
    consistency: str = "Strong"
    timeout: float = 10.0

    @property
    def where(self) -> str:
        return shown(self.uri)


def shown(uri: str) -> str:
    """The address without any user:password in it, for messages and logs."""
    parts = urlsplit(uri)
    if parts.scheme and parts.hostname:
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"
    return uri


_AUTH_WORDS = ("authenticat", "auth check", "credential")


def failure(exc: BaseException, where: str) -> BackendError:
    """The typed error for a pymilvus failure: the engine's state, named by its address."""
    if isinstance(exc, BackendError):
        return exc
    code = getattr(exc, "code", None)
    if callable(code):  # a grpc.RpcError
        code = code()
    if not isinstance(code, int):
        code = getattr(code, "name", code)  # a grpc.StatusCode by name (pymilvus passes some on)
    message = str(getattr(exc, "message", None) or exc)
    lowered = message.lower()
    # The status code first: pymilvus words an unreachable engine's retries as "Retry timeout".
    if code in (2, "UNAVAILABLE") or (code is None and ("connect" in lowered or "unavailable" in lowered)):
        return Unavailable(
            f"the Milvus engine at {where} is unreachable; start it or fix the address, and the "
            "store serves again without a restart"
        )
    if code == "DEADLINE_EXCEEDED" or "timeout" in lowered or "deadline" in lowered:
        return TimedOut(f"the Milvus engine at {where} did not answer in time ({message}); retry")
    if code in ("UNAUTHENTICATED", 1800) or any(word in lowered for word in _AUTH_WORDS):
        return Unauthenticated(
            f"the Milvus engine at {where} refused this backend's credentials; set "
            "LOCALFLEET_MILVUS_TOKEN (or the variable the token_env option names) to 'user:password' "
            "or an API key"
        )
    return EngineFailure(f"the Milvus engine at {where} failed: {message}")


def _client(config: Config) -> Any:
    try:
        return MilvusClient(
            uri=config.uri,
            token=config.token,
            db_name=config.database,
            timeout=config.timeout,
            grpc_options=_GRPC_OPTIONS,
        )
    except Exception as exc:
        raise failure(exc, config.where) from None


def _released(exc: BaseException) -> bool:
    message = str(getattr(exc, "message", None) or exc).lower()
    return "released" in message or "not loaded" in message or "load()" in message


def release_embedded(path: Path) -> None:
    """Stop the embedded Milvus Lite serving ``path`` (pymilvus started it in this process)."""
    from milvus_lite import server_manager_instance  # type: ignore[import-untyped]

    server_manager_instance.release_server(str(path))


def _ids(keys: F32Array) -> list[str]:
    buf = keys.tobytes()
    step = keys.shape[1] * 4
    return [hashlib.sha256(buf[i : i + step]).hexdigest() for i in range(0, len(buf), step)]


def _as_keys(keys: object) -> F32Array:
    with np.errstate(over="ignore"):  # float64 beyond float32 range becomes inf, refused below
        arr = np.asarray(keys, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise BadInput(f"keys must be a non-empty (count, dimension) array; got shape {arr.shape}")
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        raise BadInput(f"key {int(np.argmin(finite))} contains NaN or infinity; send finite numbers only")
    return np.ascontiguousarray(arr)


class Store:
    """A store in one Milvus collection; thread-safe (pymilvus clients are, and the dimension is guarded)."""

    def __init__(self, config: Config, client: Any) -> None:
        self.config = config
        self._client = client
        self._lock = threading.Lock()  # a change of dimension drops the collection: one at a time
        self._dim: int | None = None
        # Set when a call found the engine down: the next call connects afresh rather than wait out
        # the old channel's reconnect backoff, so the store serves as soon as the engine is back.
        self._stale = False
        self._reconnect = threading.Lock()

    @classmethod
    def connect(cls, config: Config) -> Store:
        """Connect and read the collection's dimension; raise Unavailable naming the address if the
        engine cannot be reached (so LoadModel fails at once)."""
        store = cls(config, _client(config))
        try:
            store._dim = store._read_dim()
        except BaseException:
            store.close()
            raise
        return store

    @property
    def dim(self) -> int | None:
        return self._dim

    def close(self) -> None:
        try:
            self._client.close()
        except Exception as exc:  # the engine may be gone: closing our side is all that matters
            log.debug("closing the Milvus client for %s: %s", self.config.where, exc)

    # -- the stores API ------------------------------------------------------------------------
    def set(self, keys: F32Array, values: Sequence[bytes]) -> None:
        arr = _as_keys(keys)
        if len(values) != arr.shape[0]:
            raise BadInput(f"got {arr.shape[0]} keys but {len(values)} values; send one value per key")
        for i, value in enumerate(values):
            if len(value) > MAX_VALUE_BYTES:
                raise BadInput(
                    f"value {i} is {len(value)} bytes; a Milvus store keeps values of up to "
                    f"{MAX_VALUE_BYTES} bytes (its largest text field holds their base64)"
                )
        ids = _ids(arr)
        latest = {key_id: i for i, key_id in enumerate(ids)}  # a key twice in one batch: the last wins
        rows = [
            {"id": key_id, "key": arr[i], "value": base64.b64encode(values[i]).decode("ascii")}
            for key_id, i in latest.items()
        ]
        with self._lock:
            self._check_dim(arr.shape[1], "key", writing=True)
            self._call("upsert", self.config.collection, rows)

    def get(self, keys: F32Array) -> tuple[F32Array, list[bytes]]:
        """The keys that exist, in request order, with their values."""
        arr = _as_keys(keys)
        if not self._check_dim(arr.shape[1], "key"):
            return np.empty((0, arr.shape[1]), np.float32), []
        ids = _ids(arr)
        rows: dict[str, dict[str, Any]] = {}
        unique = list(dict.fromkeys(ids))
        for lo in range(0, len(unique), _ID_CHUNK):
            chunk = unique[lo : lo + _ID_CHUNK]
            for row in self._call(
                "get",
                self.config.collection,
                ids=chunk,
                output_fields=["key", "value"],
                consistency_level=self.config.consistency,
            ):
                rows[row["id"]] = row
        found = [rows[i] for i in ids if i in rows]
        if not found:
            return np.empty((0, arr.shape[1]), np.float32), []
        return (
            np.array([row["key"] for row in found], dtype=np.float32),
            [base64.b64decode(row["value"]) for row in found],
        )

    def delete(self, keys: F32Array) -> int:
        """Remove these keys; missing ones are no error. Returns how many ids the engine was sent."""
        arr = _as_keys(keys)
        if not self._check_dim(arr.shape[1], "key"):
            return 0
        unique = list(dict.fromkeys(_ids(arr)))
        for lo in range(0, len(unique), _ID_CHUNK):
            self._call("delete", self.config.collection, ids=unique[lo : lo + _ID_CHUNK])
        return len(unique)

    def find(self, query: F32Array, top_k: int) -> tuple[F32Array, list[bytes], F32Array]:
        """The ``top_k`` keys most similar to ``query`` (cosine by default), most similar first."""
        q = _as_keys(np.asarray(query, dtype=np.float32).reshape(1, -1))
        if top_k < 1:
            raise BadInput(f"top_k is {top_k}; ask for at least 1 result")
        empty: tuple[F32Array, list[bytes], F32Array] = (
            np.empty((0, q.shape[1]), np.float32),
            [],
            np.empty(0, np.float32),
        )
        if not self._check_dim(q.shape[1], "query"):
            return empty
        limit = top_k
        if top_k > MAX_TOP_K:
            count = self.count()
            if count > MAX_TOP_K:
                raise BadInput(
                    f"TopK {top_k} is beyond Milvus's limit of {MAX_TOP_K} results for a store of "
                    f"{count} keys; ask for at most {MAX_TOP_K}"
                )
            limit = max(count, 1)  # a TopK beyond the store asks for all of it
        hits = self._call(
            "search",
            self.config.collection,
            data=[q[0]],
            limit=limit,
            anns_field="key",
            output_fields=["key", "value"],
            search_params={"metric_type": self.config.metric, "params": self._search_params(limit)},
            consistency_level=self.config.consistency,
        )[0]
        if not hits:
            return empty
        scores = np.array([hit["distance"] for hit in hits], dtype=np.float32)
        if self.config.metric == "COSINE":
            scores = np.clip(scores, -1.0, 1.0)  # rounding can put a self-match a hair above 1
        return (
            np.array([hit["entity"]["key"] for hit in hits], dtype=np.float32),
            [base64.b64decode(hit["entity"]["value"]) for hit in hits],
            scores,
        )

    def count(self) -> int:
        if self._dim is None:
            return 0
        rows = self._call(
            "query",
            self.config.collection,
            filter="",
            output_fields=["count(*)"],
            consistency_level=self.config.consistency,
        )
        return int(rows[0]["count(*)"])

    # -- internals -----------------------------------------------------------------------------
    def _call(self, method: str, *args: Any, reload: bool = True, **kwargs: Any) -> Any:
        client = self._connected()
        try:
            return getattr(client, method)(*args, timeout=self.config.timeout, **kwargs)
        except Exception as exc:
            error = failure(exc, self.config.where)
            if isinstance(error, Unavailable):
                self._stale = True
            elif reload and method in ("get", "query", "search") and _released(exc):
                # An engine that restarted (or an operator) released the collection: load it, once.
                self._call("load_collection", self.config.collection)
                return self._call(method, *args, reload=False, **kwargs)
            raise error from None

    def _connected(self) -> Any:
        if self._stale:
            with self._reconnect:
                if self._stale:
                    old, self._client = self._client, _client(self.config)
                    self._stale = False
                    with contextlib.suppress(Exception):
                        old.close()
        return self._client

    def _search_params(self, limit: int) -> dict[str, Any]:
        params = dict(self.config.search_params)
        if "ef" in params:
            params["ef"] = max(params["ef"], limit)  # HNSW needs ef >= the number of results
        return params

    def _read_dim(self) -> int | None:
        name = self.config.collection
        if not self._call("has_collection", name):
            return None
        described = self._call("describe_collection", name)
        for entry in described.get("fields", []):
            if entry.get("name") == "key":
                return int(entry.get("params", {}).get("dim"))
        raise EngineFailure(
            f"collection {name!r} at {self.config.where} has no 'key' vector field: it was not made by "
            "this backend; name another with the collection option"
        )

    def _check_dim(self, dim: int, what: str, *, writing: bool = False) -> bool:
        """True when the collection has this dimension. An empty store takes any: a read finds nothing
        (False), a write makes the collection again with it. Otherwise BadInput naming both sizes."""
        if self._dim == dim:
            return True
        # Another client of the engine (a second replica of this backend) may have made or changed the
        # collection since this one last looked.
        self._dim = self._read_dim()
        if self._dim == dim:
            return True
        if self._dim is not None and self.count() > 0:
            raise BadInput(
                f"{what} dimension {dim} does not match the store's dimension {self._dim}; send "
                f"{self._dim}-number vectors (the dimension is fixed until every key is deleted)"
            )
        if writing:
            self._create(dim)
            return True
        return False

    def _create(self, dim: int) -> None:
        name = self.config.collection
        if self._dim is not None:
            self._call("drop_collection", name)
            self._dim = None
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("key", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("value", DataType.VARCHAR, max_length=65535)
        index = MilvusClient.prepare_index_params()
        index.add_index(
            "key",
            index_type=self.config.index,
            metric_type=self.config.metric,
            params=self.config.index_params,
        )
        self._call(
            "create_collection",
            name,
            schema=schema,
            index_params=index,
            consistency_level=self.config.consistency,
        )
        self._dim = dim
