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
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from localfleet.errors import BadInput, EngineFailure, NotLoaded
from localfleet_local_store.journal import OP_SET, Persistence, SyncMode

F32Array = npt.NDArray[np.float32]

logger = logging.getLogger(__name__)

_MIN_CAPACITY = 1024
_TRANSPOSE_CHUNK = 256
# Find's top-k shortcut (see _top_k) pays off from here on.
_BLOCK = 64
_BLOCK_MIN_N = 8192
DEFAULT_COMPACT_MIN_BYTES = 64 * 1024 * 1024


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

    def __init__(self) -> None:
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
    ) -> VectorStore:
        """A store in memory only (``directory`` None), or loaded from ``directory``.

        ``sync="always"`` fsyncs each write before it returns; ``"os"`` hands it to the OS only
        (survives a process crash, maybe not a power cut). The journal is compacted into a new
        snapshot once it outgrows both the snapshot and ``compact_min_bytes``.
        """
        if sync not in ("always", "os"):
            raise BadInput(f"sync must be 'always' or 'os', not {sync!r}")
        store = cls()
        if directory is None:
            return store
        mode: SyncMode = sync
        persist, snapshot, records = Persistence.open(Path(directory), mode, compact_min_bytes)
        try:
            if snapshot is not None and snapshot.dim is not None:
                store._apply_set(snapshot.keys, snapshot.values)
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
        """Bytes held by the key matrices (allocated capacity) and the values."""
        with self._state_lock:
            return self._raw.nbytes + self._kt.nbytes + self._value_bytes

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
                    self._values = []
                    self._index = {}
                    self._value_bytes = 0

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
        with self._state_lock:
            self._check_open()
            self._check_dim(q.shape[0], "query")
            n = self._n
            if n == 0:
                return np.empty((0, q.shape[0]), dtype=np.float32), [], np.empty(0, dtype=np.float32)
            sims = qn @ self._kt[:, :n]
            idx = _top_k(sims, min(top_k, n))  # a TopK beyond the store asks for all of it, no more
            found_keys = self._raw[idx]
            found_values = [self._values[i] for i in idx.tolist()]
        # Rounding can put a self-match a hair above 1.
        return found_keys, found_values, np.clip(sims[idx], -1.0, 1.0)

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

    def _apply_set(self, keys: F32Array, values: list[bytes]) -> None:
        """Journal then publish a validated batch. Caller holds the write lock."""
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
        if m:
            fresh = keys[new_rows]
            raw[n : n + m] = fresh
            _store_normalized(kt, n, fresh)

        if self._persist is not None:
            self._persist.append_set(keys, values)  # raises before anything is published

        with self._state_lock:
            self._raw, self._kt = raw, kt
            self._dim = dim
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
        kt = np.empty((dim, capacity), dtype=np.float32)
        if keep:
            raw[:keep] = self._raw[:keep]
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
        with self._state_lock:
            self._remove(list(cols), removed)
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
        self._kt[:, holes] = self._kt[:, movers]
        for hole, mover in zip(holes.tolist(), movers.tolist(), strict=True):
            self._values[hole] = self._values[mover]
            self._index[self._raw[hole].tobytes()] = hole
        del self._values[end:]
        self._n = end
        if end == 0:
            self._dim = None  # an empty store takes any dimension again
        capacity = self._raw.shape[0]
        if capacity > _MIN_CAPACITY and end < capacity // 4:
            self._raw, self._kt = self._allocate(self._raw.shape[1], max(_MIN_CAPACITY, 2 * end), end)

    def _snapshot(self) -> None:
        persist = self._persist
        if persist is None or not persist.dirty:
            return
        # Readers may run meanwhile: they do not mutate, and writers wait on the write lock.
        persist.write_snapshot(self._raw[: self._n], self._values)

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
