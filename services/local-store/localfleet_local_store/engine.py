"""The vector store behind LocalAI's Stores* calls: float32 keys, bytes values, cosine search.

Memory layout, chosen for ``find`` speed (a matrix-vector product is bound by memory bandwidth):

- ``_kt``: the L2-normalised keys, TRANSPOSED, as one C-contiguous (dim, capacity) float32 matrix.
  ``q @ _kt[:, :n]`` streams it row by row and measures ~1.5x faster than ``K @ q`` on a (n, dim)
  matrix. Capacity doubles on growth, so the matrix is never rebuilt per call.
- ``_raw``: the keys exactly as given, (capacity, dim), so Get/Find return them bit for bit.
- ``_values`` (list) and ``_index`` (key bytes -> column) for exact-match upsert/get/delete.
  Delete moves the last columns into the holes, so columns 0..n-1 stay dense.

Locking: two locks. ``_write_lock`` serialises writers (set/delete/flush/close) for their whole
length, journal I/O included, so journal order is apply order. ``_state_lock`` guards what readers
see and is held only briefly by a writer, when it publishes a batch; readers (get/find) hold it
while they read. A find therefore never sees half a batch, and readers are not blocked while a
writer validates, copies or fsyncs. Writers read the index without ``_state_lock``: only writers
mutate it, and they hold ``_write_lock``. New rows are written past column n before publishing,
where no reader looks.

Threads: the scan runs on this process's own threads, in column chunks (one per usable CPU), with BLAS
held to one thread. OpenBLAS' own workers spin for a while after every call; in a server they took the
cores the gRPC threads needed next, and a find through gRPC cost twice the bare scan. Ours sleep when done.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt

from localfleet.cpus import usable
from localfleet.errors import BadInput, EngineFailure, NotLoaded
from localfleet_local_store.ann import OVERSAMPLE  # usearch itself loads with the first graph
from localfleet_local_store.journal import OP_SET, Persistence, SyncMode

if TYPE_CHECKING:
    from localfleet_local_store.ann import Hnsw, IndexConfig

F32Array = npt.NDArray[np.float32]

logger = logging.getLogger(__name__)

_MIN_CAPACITY = 1024
_TRANSPOSE_CHUNK = 256
# Find's top-k shortcut (see _top_k) pays off from here on.
_BLOCK = 64
_BLOCK_MIN_N = 8192
DEFAULT_COMPACT_MIN_BYTES = 64 * 1024 * 1024
# With an HNSW index, a find scans exactly when the store is this small or asks for most of it.
_ANN_MIN_N = 2048
# The scan is split over threads from here on (below, handing chunks over costs more than it saves).
_SPLIT_MIN_N = 32768
_GRAPH_BATCH = 65536
_REBUILD_CHUNK = 4096  # keys copied per state-lock hold by a rebuild (~6 MB at 384 dims)

_scan_pool: ThreadPoolExecutor | None = None
_scan_pool_lock = threading.Lock()


def _limit_blas() -> None:
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    threadpool_limits(1, user_api="blas")  # for the process: the scan brings its own threads


_limit_blas()


def _pool(workers: int) -> ThreadPoolExecutor:
    global _scan_pool  # noqa: PLW0603 (one pool per process, made with the first large scan)
    with _scan_pool_lock:
        if _scan_pool is None:
            _scan_pool = ThreadPoolExecutor(workers - 1, thread_name_prefix="store-scan")
        return _scan_pool


def _scan(qn: F32Array, kt: F32Array, n: int) -> F32Array:
    """``qn @ kt[:, :n]``, in column chunks on the scan threads and this one when n is large."""
    workers = usable()
    if workers == 1 or n < _SPLIT_MIN_N:
        out: F32Array = qn @ kt[:, :n]
        return out
    sims = np.empty(n, dtype=np.float32)
    step = -(-n // workers)
    pool = _pool(workers)
    futures = [
        pool.submit(np.matmul, qn, kt[:, lo : min(n, lo + step)], out=sims[lo : min(n, lo + step)])
        for lo in range(step, n, step)
    ]
    np.matmul(qn, kt[:, :step], out=sims[:step])
    for future in futures:
        future.result()
    return sims


def _normalize(rows: F32Array) -> F32Array:
    """Unit-length rows; zero rows stay zero (so they score 0 against everything, never NaN)."""
    # Divide by the largest magnitude first: squaring 1e30 in float32 would overflow to inf.
    scale = np.abs(rows).max(axis=1, keepdims=True)
    scale[scale == 0] = 1.0
    scaled = rows / scale
    norm = np.linalg.norm(scaled, axis=1, keepdims=True)
    norm[norm == 0] = 1.0
    out: F32Array = (scaled / norm).astype(np.float32, copy=False)
    return out


def _store_normalized(kt: F32Array, start: int, rows: F32Array) -> None:
    """Write the normalised ``rows`` as columns ``start``.. of ``kt``."""
    # In slices that stay in cache: one big transposed copy is ~10x slower (measured at 100k x 384).
    for lo in range(0, rows.shape[0], _TRANSPOSE_CHUNK):
        chunk = rows[lo : lo + _TRANSPOSE_CHUNK]
        kt[:, start + lo : start + lo + chunk.shape[0]] = _normalize(chunk).T


def _row_bytes(keys: F32Array) -> list[bytes]:
    """Each row's float32 bytes: the identity of a key (exact match, as LocalAI's store does)."""
    buf = keys.tobytes()
    step = keys.shape[1] * 4
    return [buf[i : i + step] for i in range(0, len(buf), step)]


def _as_keys(keys: object) -> F32Array:
    try:
        with np.errstate(over="ignore"):  # float64 beyond float32 range becomes inf, rejected below
            arr = np.asarray(keys, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise BadInput(f"keys must be equal-length lists of numbers ({exc})") from exc
    if arr.ndim != 2:
        raise BadInput(f"keys must be a 2-D array of shape (count, dimension); got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise BadInput("no keys given; send at least one key")
    if arr.shape[1] == 0:
        raise BadInput("keys are empty vectors; send keys with at least one number")
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        row = int(np.argmin(finite))
        raise BadInput(f"key {row} contains NaN or infinity; send finite numbers only")
    return np.ascontiguousarray(arr)


def _as_query(query: object) -> F32Array:
    try:
        with np.errstate(over="ignore"):
            arr = np.asarray(query, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise BadInput(f"the query key must be a list of numbers ({exc})") from exc
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 1:
        raise BadInput(f"the query key must be one vector; got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise BadInput("the query key is empty; send a vector with at least one number")
    if not np.isfinite(arr).all():
        raise BadInput("the query key contains NaN or infinity; send finite numbers only")
    return np.ascontiguousarray(arr)


def _as_values(values: Sequence[bytes], count: int) -> list[bytes]:
    if len(values) != count:
        raise BadInput(f"got {count} keys but {len(values)} values; send exactly one value per key")
    out: list[bytes] = []
    for i, value in enumerate(values):
        if not isinstance(value, bytes | bytearray | memoryview):
            raise BadInput(f"value {i} is {type(value).__name__}, not bytes")
        out.append(bytes(value))
    return out


def _top_k(sims: F32Array, k: int) -> npt.NDArray[np.intp]:
    """Indices of the k largest similarities, largest first."""
    n = sims.shape[0]
    if k >= n:
        return np.argsort(-sims, kind="stable")
    if n >= _BLOCK_MIN_N and k <= n // (_BLOCK * 4):
        # The k-th largest of the block maxima is a lower bound of the k-th largest overall (k blocks
        # each hold an element at least that large), so only elements above it can be in the top k.
        # Two cheap passes then replace an argpartition over all n (~0.7 ms at 100k).
        maxima = sims[: (n // _BLOCK) * _BLOCK].reshape(-1, _BLOCK).max(axis=1)
        bound = np.partition(maxima, maxima.shape[0] - k)[maxima.shape[0] - k]
        candidates = np.flatnonzero(sims >= bound)
    else:
        candidates = np.arange(n)
    picked = candidates[np.argpartition(sims[candidates], candidates.shape[0] - k)[-k:]]
    return picked[np.argsort(-sims[picked], kind="stable")]


class VectorStore:
    """Exact-match key/value store with cosine nearest-neighbour search; thread-safe.

    Build one with :meth:`open`. All methods may be called from several threads at once.
    """

    def __init__(self, index: IndexConfig | None = None) -> None:
        # flat keeps the transposed unit keys for the scan; hnsw keeps a graph (and ids) instead.
        self._config = index
        self._ann: Hnsw | None = None
        self._ids: npt.NDArray[np.uint64] = np.empty(0, dtype=np.uint64)  # column -> id (hnsw)
        self._col_of: npt.NDArray[np.int64] = np.empty(0, dtype=np.int64)  # id -> column or -1
        self._next_id = 0
        self._ann_saved: tuple[int, int] | None = None  # the snapshot the index on disk was saved for
        self._rebuilder: threading.Thread | None = None
        self._write_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._persist: Persistence | None = None
        self._closed = False
        self._dim: int | None = None
        self._n = 0
        self._raw: F32Array = np.empty((0, 0), dtype=np.float32)
        self._kt: F32Array = np.empty((0, 0), dtype=np.float32)
        self._values: list[bytes] = []
        self._index: dict[bytes, int] = {}
        self._value_bytes = 0

    @classmethod
    def open(
        cls,
        directory: Path | None,
        sync: Literal["always", "os"] = "always",
        *,
        compact_min_bytes: int = DEFAULT_COMPACT_MIN_BYTES,
        index: IndexConfig | None = None,
    ) -> VectorStore:
        """A store in memory only (``directory`` None), or loaded from ``directory``.

        ``sync="always"`` fsyncs each write before it returns; ``"os"`` hands it to the OS only
        (survives a process crash, maybe not a power cut). The journal is compacted into a new
        snapshot once it outgrows both the snapshot and ``compact_min_bytes``.
        """
        if sync not in ("always", "os"):
            raise BadInput(f"sync must be 'always' or 'os', not {sync!r}")
        store = cls(index)
        if directory is None:
            return store
        mode: SyncMode = sync
        persist, snapshot, records = Persistence.open(Path(directory), mode, compact_min_bytes)
        try:
            if snapshot is not None and snapshot.dim is not None:
                store._apply_set(snapshot.keys, snapshot.values, index=False)
                if store._hnsw:
                    store._attach_index(persist)
            for i, record in enumerate(records):
                if store._dim is not None and record.keys.shape[1] != store._dim:
                    raise EngineFailure(
                        f"journal record {i + 1} in {directory} has dimension {record.keys.shape[1]} but "
                        f"the store has dimension {store._dim}; the journal is damaged and was left "
                        "untouched. Restore the directory from a backup"
                    )
                if record.op == OP_SET:
                    store._apply_set(record.keys, record.values)
                else:
                    store._apply_delete(record.keys)
            store._persist = persist
            if persist.should_compact():
                store._snapshot()
        except BaseException:
            persist.close()
            raise
        return store

    # -- introspection ---------------------------------------------------------------------------

    @property
    def dim(self) -> int | None:
        """The key dimension, or None while the store is empty (then any dimension is accepted)."""
        return self._dim

    def __len__(self) -> int:
        return self._n

    def nbytes(self) -> int:
        """Bytes held by the key matrices (allocated capacity), the values and the index."""
        with self._state_lock:
            held = self._raw.nbytes + self._kt.nbytes + self._value_bytes + self._ids.nbytes
            ann = self._ann
        return held + self._col_of.nbytes + (ann.nbytes() if ann is not None else 0)

    @property
    def _hnsw(self) -> bool:
        return self._config is not None and self._config.kind == "hnsw"

    def set_index(self, index: IndexConfig) -> None:
        """Switch an open store to another index: ef_search changes in place, anything else rebuilds
        (readers keep the old structure meanwhile)."""
        from localfleet_local_store.ann import IndexConfig

        with self._write_lock:
            self._check_open()
            old = self._config or IndexConfig()
            if old == index:
                return
            if old.same_graph(index):
                self._config = index
                if self._ann is not None:
                    self._ann.set_ef_search(index.ef_search)
                return
            n, dim = self._n, self._raw.shape[1]
            kt = np.empty((dim, 0), dtype=np.float32)
            if index.kind == "flat" and n:
                kt = np.empty((dim, self._raw.shape[0]), dtype=np.float32)
                _store_normalized(kt, 0, self._raw[:n])
            with self._state_lock:
                self._config = index
                self._ann = None
                self._kt = kt
                self._ann_saved = None
            if index.kind == "hnsw" and n:
                self._attach_index(None)

    # -- writes ------------------------------------------------------------------------------------

    def set(self, keys: F32Array, values: Sequence[bytes]) -> None:
        """Upsert ``values[i]`` under ``keys[i]``; a batch is applied whole or not at all."""
        arr = _as_keys(keys)
        vals = _as_values(values, arr.shape[0])
        with self._write_lock:
            self._check_open()
            self._check_dim(arr.shape[1], "key")
            self._apply_set(arr, vals)
            self._maybe_compact()

    def delete(self, keys: F32Array) -> int:
        """Remove these keys (missing ones are ignored); returns how many were removed."""
        arr = _as_keys(keys)
        with self._write_lock:
            self._check_open()
            self._check_dim(arr.shape[1], "key")
            removed = self._apply_delete(arr)
            self._maybe_compact()
            return removed

    def flush(self) -> None:
        """Write a snapshot and empty the journal (a no-op in memory, or when nothing changed)."""
        with self._write_lock:
            self._check_open()
            self._snapshot()

    def close(self) -> None:
        """Flush (when persistent) and release everything; later calls raise NotLoaded."""
        with self._write_lock:
            if self._closed:
                return
            try:
                self._snapshot()  # everything is in the journal already; this only speeds up the next open
            finally:
                if self._persist is not None:
                    self._persist.close()
                with self._state_lock:
                    self._closed = True
                    self._dim = None
                    self._n = 0
                    self._raw = self._kt = np.empty((0, 0), dtype=np.float32)
                    self._ann = None
                    self._values = []
                    self._index = {}
                    self._value_bytes = 0
        if self._rebuilder is not None:
            self._rebuilder.join()  # it gives up at its next chunk

    # -- reads -------------------------------------------------------------------------------------

    def get(self, keys: F32Array) -> tuple[F32Array, list[bytes]]:
        """The keys that exist, in request order, with their values."""
        arr = _as_keys(keys)
        kbs = _row_bytes(arr)
        with self._state_lock:
            self._check_open()
            self._check_dim(arr.shape[1], "key")
            cols = [j for kb in kbs if (j := self._index.get(kb)) is not None]
            if not cols:
                return np.empty((0, arr.shape[1]), dtype=np.float32), []
            return self._raw[cols], [self._values[j] for j in cols]

    def find(self, query: F32Array, top_k: int) -> tuple[F32Array, list[bytes], F32Array]:
        """The ``top_k`` keys most cosine-similar to ``query``, most similar first, with their
        values and similarities. Fewer when the store holds fewer."""
        q = _as_query(query)
        if top_k < 1:
            raise BadInput(f"top_k is {top_k}; ask for at least 1 result")
        qn = _normalize(q[np.newaxis])[0]
        if self._hnsw:
            return self._find_ann(q, qn, top_k)
        with self._state_lock:
            self._check_open()
            self._check_dim(q.shape[0], "query")
            n = self._n
            if n == 0:
                return np.empty((0, q.shape[0]), dtype=np.float32), [], np.empty(0, dtype=np.float32)
            sims = _scan(qn, self._kt, n)
            idx = _top_k(sims, min(top_k, n))  # a TopK beyond the store asks for all of it, no more
            found_keys = self._raw[idx]
            found_values = [self._values[i] for i in idx.tolist()]
        # Rounding can put a self-match a hair above 1.
        return found_keys, found_values, np.clip(sims[idx], -1.0, 1.0)

    def _find_ann(self, q: F32Array, qn: F32Array, top_k: int) -> tuple[F32Array, list[bytes], F32Array]:
        """Candidates from the graph, then exact cosines for them; ids a concurrent writer has added
        but not yet published (or removed) are skipped, asking for more when that leaves too few."""
        with self._state_lock:
            self._check_open()
            self._check_dim(q.shape[0], "query")
            n, ann = self._n, self._ann
        k = min(top_k, n)
        if n == 0:
            return np.empty((0, q.shape[0]), dtype=np.float32), [], np.empty(0, dtype=np.float32)
        want = min(n, OVERSAMPLE * k)  # the graph proposes, the exact cosines decide
        while True:
            ids = ann.search(qn, want) if ann is not None and n > _ANN_MIN_N and 4 * k <= n else None
            with self._state_lock:
                self._check_open()
                n = self._n
                if ids is None:
                    cols = np.arange(n)
                else:
                    known = ids[ids < self._col_of.shape[0]]
                    cols = self._col_of[known.astype(np.intp)]
                    cols = cols[cols >= 0]
                    if cols.shape[0] < min(k, n) and ids.shape[0] == want and want < n:
                        want *= 2
                        continue
                sims = _normalize(self._raw[cols]) @ qn
                order = np.argsort(-sims, kind="stable")[:k]
                idx = cols[order]
                found_keys = self._raw[idx]
                found_values = [self._values[i] for i in idx.tolist()]
            return found_keys, found_values, np.clip(sims[order], -1.0, 1.0)

    def _attach_index(self, persist: Persistence | None) -> None:
        """Give columns 0..n-1 their graph: the saved one when it matches the snapshot, else built anew.
        Caller holds the write lock (or is opening)."""
        from localfleet_local_store.ann import Hnsw

        assert self._config is not None
        n, dim = self._n, self._raw.shape[1]
        loaded = None
        if persist is not None and persist.has_snapshot:
            loaded = Hnsw.load(
                persist.directory,
                dim,
                self._config,
                generation=persist.generation,
                snapshot_crc=persist.snapshot_crc,
                count=n,
            )
        if loaded is not None:
            ann, ids, next_id = loaded
            self._ann_saved = (persist.generation, persist.snapshot_crc) if persist else None
        else:
            ids, next_id = np.arange(n, dtype=np.uint64), n
            ann = self._build_graph(ids)
        col_of = np.full(max(next_id, 1024), -1, dtype=np.int64)
        col_of[ids.astype(np.intp)] = np.arange(n)
        ids_all = np.empty(self._raw.shape[0], dtype=np.uint64)
        ids_all[:n] = ids
        with self._state_lock:
            self._ann, self._ids, self._col_of, self._next_id = ann, ids_all, col_of, next_id
            self._kt = np.empty((dim, 0), dtype=np.float32)  # the graph answers finds now

    def _build_graph(self, ids: npt.NDArray[np.uint64]) -> Hnsw:
        """A graph over columns 0..len(ids)-1 under these ids. Write lock held (or opening)."""
        from localfleet_local_store.ann import Hnsw

        assert self._config is not None
        n = ids.shape[0]
        ann = Hnsw(self._raw.shape[1], self._config)
        for lo in range(0, n, _GRAPH_BATCH):
            hi = min(n, lo + _GRAPH_BATCH)
            ann.add(ids[lo:hi], _normalize(self._raw[lo:hi]))
        return ann

    def _start_rebuild(self) -> None:
        """Replace a graph crowded with tombstones by one over the live keys, built in a thread of its own
        (at a million keys that takes minutes): finds and writes go on with the old graph meanwhile.
        Write lock held."""
        if self._rebuilder is not None and self._rebuilder.is_alive():
            return
        self._rebuilder = threading.Thread(
            target=self._rebuild_all, args=(self._ann,), name="store-hnsw-rebuild", daemon=True
        )
        self._rebuilder.start()

    def _rebuild_all(self, old: Hnsw) -> None:
        # Deletes during a rebuild leave their tombstones in the new graph too: go again if they crowd it.
        while (new := self._rebuild(old)) is not None and new.stale():
            old = new

    def _rebuild(self, old: Hnsw) -> Hnsw | None:
        """Copy the live keys a chunk at a time (under the state lock, briefly) into a new graph under
        the same ids, so readers still on the old graph map its answers right; then, under the write
        lock, reconcile with the writes made meanwhile and swap. Gives up if the store closed or its
        graph was replaced (set_index, emptied)."""
        from localfleet_local_store.ann import Hnsw

        assert self._config is not None
        ann = Hnsw(old.dim, self._config)
        built: list[npt.NDArray[np.uint64]] = []
        lo = 0
        while True:
            with self._state_lock:
                if self._closed or self._ann is not old:
                    return None
                hi = min(self._n, lo + _REBUILD_CHUNK)
                ids, rows = self._ids[lo:hi].copy(), self._raw[lo:hi].copy()
            if lo >= hi:
                break
            ann.add(ids, _normalize(rows))
            built.append(ids)
            lo = hi
            self._rebuild_progress(lo)
        with self._write_lock:
            if self._closed or self._ann is not old:
                return None
            # Deletes meanwhile may have removed built ids, or moved unbuilt ones below ``lo``.
            live = self._ids[: self._n]
            have = np.concatenate(built) if built else np.empty(0, dtype=np.uint64)
            dead = have[~np.isin(have, live)]
            missing = np.flatnonzero(~np.isin(live, have))
            if dead.shape[0]:
                ann.remove(dead)
            if missing.shape[0]:
                ann.add(live[missing], _normalize(self._raw[missing]))
            assert self._config is not None
            if self._config.ef_search != ann.config.ef_search:  # set_index changed it meanwhile
                ann.set_ef_search(self._config.ef_search)
            with self._state_lock:
                self._ann = ann
                self._ann_saved = None
        logger.info(
            "HNSW index rebuilt over %d live keys (%d removed keys were left in the old graph)",
            live.shape[0],
            old.tombstones,
        )
        return ann

    def _rebuild_progress(self, done: int) -> None:
        """Called by the rebuild thread after each chunk (a test holds it there to write meanwhile)."""

    def _index_add(self, count: int, rows: F32Array) -> npt.NDArray[np.uint64]:
        """New ids for ``count`` new keys, added to the graph (not yet published). Write lock held."""
        ids = np.arange(self._next_id, self._next_id + count, dtype=np.uint64)
        if self._ann is None:
            from localfleet_local_store.ann import Hnsw

            assert self._config is not None
            self._ann = Hnsw(rows.shape[1], self._config)
        self._ann.add(ids, _normalize(rows))
        self._next_id += count
        return ids

    def _id_maps(self, capacity: int, n: int) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64]]:
        """The column->id and id->column arrays, grown (as copies, unpublished) to fit."""
        col_of = self._col_of
        if self._next_id > col_of.shape[0]:
            col_of = np.full(max(2 * col_of.shape[0], self._next_id), -1, dtype=np.int64)
            col_of[: self._col_of.shape[0]] = self._col_of
        id_cols = self._ids
        if id_cols.shape[0] < capacity:
            id_cols = np.empty(capacity, dtype=np.uint64)
            id_cols[:n] = self._ids[:n]
        return id_cols, col_of

    # -- internals -----------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise NotLoaded("the store is closed; load it again with LoadModel")

    def _check_dim(self, dim: int, what: str) -> None:
        if self._dim is not None and dim != self._dim:
            raise BadInput(
                f"{what} dimension {dim} does not match the store's dimension {self._dim}; send "
                f"{self._dim}-number vectors (the dimension is fixed until every key is deleted)"
            )

    def _apply_set(self, keys: F32Array, values: list[bytes], *, index: bool = True) -> None:
        """Journal then publish a validated batch. Caller holds the write lock. ``index`` False: leave
        the graph to _attach_index (a snapshot at open)."""
        kbs = _row_bytes(keys)
        last: dict[bytes, int] = {}
        for i, kb in enumerate(kbs):
            last[kb] = i  # a key repeated in one batch: the last value wins
        if len(last) != len(kbs):
            rows = list(last.values())
            keys = keys[rows]
            values = [values[i] for i in rows]
            kbs = list(last)
        dim = keys.shape[1]
        n = self._n
        updates: list[tuple[int, int]] = []
        new_rows: list[int] = []
        for i, kb in enumerate(kbs):
            col = self._index.get(kb)
            if col is None:
                new_rows.append(i)
            else:
                updates.append((col, i))

        # Stage new rows past column n (invisible to readers), in new arrays if we must grow.
        m = len(new_rows)
        raw, kt = self._raw, self._kt
        if n == 0 and raw.shape[1] != dim:
            raw, kt = self._allocate(dim, max(_MIN_CAPACITY, m), 0)
        elif n + m > raw.shape[0]:
            raw, kt = self._allocate(dim, max(_MIN_CAPACITY, 2 * raw.shape[0], n + m), n)
        fresh = keys[new_rows]
        raw[n : n + m] = fresh
        if m and not self._hnsw:
            _store_normalized(kt, n, fresh)

        if self._persist is not None:
            self._persist.append_set(keys, values)  # raises before anything is published
        ids = self._index_add(m, fresh) if m and index and self._hnsw else None
        id_cols, col_of = self._id_maps(raw.shape[0], n) if ids is not None else (self._ids, self._col_of)

        with self._state_lock:
            self._raw, self._kt = raw, kt
            self._dim = dim
            if ids is not None:
                id_cols[n : n + m] = ids
                col_of[ids.astype(np.intp)] = np.arange(n, n + m)
                self._ids, self._col_of = id_cols, col_of
            for col, i in updates:
                self._value_bytes += len(values[i]) - len(self._values[col])
                self._values[col] = values[i]
            for offset, i in enumerate(new_rows):
                self._index[kbs[i]] = n + offset
                self._values.append(values[i])
                self._value_bytes += len(values[i])
            self._n = n + m

    def _allocate(self, dim: int, capacity: int, keep: int) -> tuple[F32Array, F32Array]:
        raw = np.empty((capacity, dim), dtype=np.float32)
        kt = np.empty((dim, 0 if self._hnsw else capacity), dtype=np.float32)
        if keep:
            raw[:keep] = self._raw[:keep]
            if not self._hnsw:
                kt[:, :keep] = self._kt[:, :keep]
        return raw, kt

    def _apply_delete(self, keys: F32Array) -> int:
        """Journal then remove the keys present. Caller holds the write lock."""
        if self._n == 0:
            return 0
        cols: dict[bytes, int] = {}
        for kb in _row_bytes(keys):
            col = self._index.get(kb)
            if col is not None:
                cols[kb] = col
        if not cols:
            return 0
        removed = np.array(sorted(cols.values()), dtype=np.intp)
        if self._persist is not None:
            self._persist.append_delete(self._raw[removed])
        ann = self._ann
        gone = self._ids[removed].copy() if ann is not None else None
        with self._state_lock:
            self._remove(list(cols), removed)
        if ann is not None and gone is not None:
            ann.remove(gone)  # finds meanwhile skip these ids: they map to no column any more
            if self._n and ann.stale():
                self._start_rebuild()
        return len(cols)

    def _remove(self, kbs: list[bytes], removed: npt.NDArray[np.intp]) -> None:
        """Fill the holes below the new end with the surviving columns above it."""
        n = self._n
        end = n - removed.shape[0]
        holes = removed[removed < end]
        tail_removed = np.zeros(n - end, dtype=bool)
        tail_removed[removed[removed >= end] - end] = True
        movers = np.flatnonzero(~tail_removed) + end
        for kb in kbs:
            del self._index[kb]
        for col in removed.tolist():
            self._value_bytes -= len(self._values[col])
        self._raw[holes] = self._raw[movers]
        if self._ann is not None:
            self._col_of[self._ids[removed].astype(np.intp)] = -1
            self._ids[holes] = self._ids[movers]
            self._col_of[self._ids[holes].astype(np.intp)] = holes
        if not self._hnsw:
            self._kt[:, holes] = self._kt[:, movers]
        for hole, mover in zip(holes.tolist(), movers.tolist(), strict=True):
            self._values[hole] = self._values[mover]
            self._index[self._raw[hole].tobytes()] = hole
        del self._values[end:]
        self._n = end
        if end == 0:
            self._dim = None  # an empty store takes any dimension again
            self._ann = None
            self._ann_saved = None
        capacity = self._raw.shape[0]
        if capacity > _MIN_CAPACITY and end < capacity // 4:
            self._raw, self._kt = self._allocate(self._raw.shape[1], max(_MIN_CAPACITY, 2 * end), end)
            if self._ann is not None:
                self._ids = self._ids[: self._raw.shape[0]].copy()

    def _snapshot(self) -> None:
        persist = self._persist
        if persist is None:
            return
        if persist.dirty:
            # Readers may run meanwhile: they do not mutate, and writers wait on the write lock.
            persist.write_snapshot(self._raw[: self._n], self._values)
        ann = self._ann
        saved_for = (persist.generation, persist.snapshot_crc)
        if ann is not None and self._n and self._ann_saved != saved_for:
            try:
                ann.save(persist.directory, *saved_for, self._ids[: self._n], self._next_id)
                self._ann_saved = saved_for
            except OSError as exc:
                # Only a cache of the snapshot: the next open rebuilds it.
                logger.warning("could not save the HNSW index in %s: %s", persist.directory, exc)

    def _maybe_compact(self) -> None:
        persist = self._persist
        if persist is None or not persist.should_compact():
            return
        try:
            self._snapshot()
        except EngineFailure as exc:
            # The write itself is journaled and applied: report success, retry compaction later.
            logger.warning("compaction of %s failed, will retry: %s", persist.directory, exc)
            persist.postpone_compaction()
