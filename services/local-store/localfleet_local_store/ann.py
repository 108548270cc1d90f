"""An optional HNSW index for one store, on usearch, and its crash-safe copy beside the store's files.

Why usearch (Unum, Apache-2.0): wheels for every platform with no BLAS or OpenMP of their own, removal by
key (faiss' HNSW cannot remove; hnswlib only marks deleted and had no release since 2023), concurrent-safe
save/restore to a file, and SIMD distance kernels picked at run time.

Labels are ids the engine hands out (never reused), not column numbers: the engine moves columns on
delete, and an id stays put. Vectors go in L2-normalised, so inner product is cosine.

The graph only proposes candidates: it is asked for several times TopK (``OVERSAMPLE``) and the engine
ranks those by their exact cosine from the store's own float32 keys. So the graph may hold its vectors in
half precision (``f16``, the default: half the memory and about twice the build speed of ``f32``) or int8
(``i8``, a quarter) and still return the exact top k whenever they are among its candidates.

usearch keeps a removed key's node as a tombstone that later adds reuse; deletes with few adds leave the
graph full of them (memory held, searches walking dead nodes), so past ``REBUILD_FRACTION`` of the live
count the engine builds the graph anew from the live keys.

The copy on disk (``hnsw.usearch`` plus ``hnsw.meta``) is only a cache of what the snapshot holds: it is
written after a snapshot, and used at open only when its meta names that very snapshot (generation and
CRC), its parameters and dimension, and the usearch file's size and CRC. Anything else (a crash between
the two files, a restored backup, other parameters) and the index is rebuilt from the store, so the
store's own durability is what it was without an index.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from localfleet.cpus import usable

log = logging.getLogger(__name__)

INDEX_NAME = "hnsw.usearch"
META_NAME = "hnsw.meta"
_TMP = ".tmp"
_META = struct.Struct(
    "<4sIQIQIIIQIQI"
)  # magic, version, generation, snap crc, count, dim, m, efc, size, crc, next, dtype
_MAGIC = b"LFSH"
_VERSION = 2
Dtype = Literal["f32", "f16", "i8"]
_DTYPES: tuple[Dtype, ...] = ("f32", "f16", "i8")
# Candidates asked of the graph per result wanted, re-ranked exactly by the engine.
OVERSAMPLE = 4
# Rebuild once the tombstones outnumber this fraction of the live keys (and REBUILD_MIN).
REBUILD_FRACTION = 0.5
REBUILD_MIN = 1024
_CRC = struct.Struct("<I")
# Adds go in in slices, each under the index lock, so a find waits for one slice at most.
_ADD_SLICE = 2048


@dataclass(frozen=True, slots=True)
class IndexConfig:
    """A store's index: ``flat`` (exact scan, the default) or ``hnsw`` with its parameters."""

    kind: Literal["flat", "hnsw"] = "flat"
    m: int = 16
    ef_construction: int = 128
    ef_search: int = 128
    dtype: Dtype = "f16"

    def same_graph(self, other: IndexConfig) -> bool:
        """Whether an index built with ``other`` serves this config (ef_search can change at any time)."""
        return (self.kind, self.m, self.ef_construction, self.dtype) == (
            other.kind,
            other.m,
            other.ef_construction,
            other.dtype,
        )


class Hnsw:
    """A usearch HNSW graph over unit vectors; thread-safe (one lock: usearch's per-call thread contexts
    must not be shared by two calls at once)."""

    def __init__(self, dim: int, config: IndexConfig) -> None:
        self.dim = dim
        self.config = config
        from usearch.index import Index  # only a store with index:hnsw loads it

        self.lock = threading.Lock()
        self.tombstones = 0  # removed keys whose nodes no add has reused yet
        self._index = Index(
            ndim=dim,
            metric="ip",
            dtype=config.dtype,
            connectivity=config.m,
            expansion_add=config.ef_construction,
            expansion_search=config.ef_search,
        )

    def set_ef_search(self, ef: int) -> None:
        with self.lock:
            self._index.expansion_search = ef  # type: ignore[misc]  # a setter at run time, not in its stubs
            old = self.config
            self.config = IndexConfig("hnsw", old.m, old.ef_construction, ef, old.dtype)

    def add(self, ids: npt.NDArray[np.uint64], unit_rows: npt.NDArray[np.float32]) -> None:
        threads = usable()
        for lo in range(0, ids.shape[0], _ADD_SLICE):
            with self.lock:
                self._index.add(ids[lo : lo + _ADD_SLICE], unit_rows[lo : lo + _ADD_SLICE], threads=threads)
        self.tombstones = max(0, self.tombstones - ids.shape[0])  # usearch fills freed slots first

    def remove(self, ids: npt.NDArray[np.uint64]) -> None:
        with self.lock:
            self._index.remove(ids)
        self.tombstones += ids.shape[0]

    def stale(self) -> bool:
        """Whether tombstones crowd the graph enough that building it anew pays."""
        live = len(self._index)
        return self.tombstones >= max(REBUILD_MIN, REBUILD_FRACTION * live)

    def search(self, unit_query: npt.NDArray[np.float32], count: int) -> npt.NDArray[np.uint64]:
        with self.lock:
            matches = self._index.search(unit_query, count, threads=1)
        keys: npt.NDArray[np.uint64] = np.asarray(matches.keys, dtype=np.uint64)
        return keys

    def nbytes(self) -> int:
        return int(self._index.memory_usage)

    # -- the copy beside the store ------------------------------------------------------------------

    def save(
        self, directory: Path, generation: int, snapshot_crc: int, ids: npt.NDArray[np.uint64], next_id: int
    ) -> None:
        """Write the index and its meta (temp files, fsync, rename); the meta goes last."""
        index_tmp = directory / (INDEX_NAME + _TMP)
        meta_tmp = directory / (META_NAME + _TMP)
        try:
            with self.lock:
                self._index.save(str(index_tmp))
            size, crc = _file_crc(index_tmp, sync=True)
            os.replace(index_tmp, directory / INDEX_NAME)
            head = _META.pack(
                _MAGIC,
                _VERSION,
                generation,
                snapshot_crc,
                ids.shape[0],
                self.dim,
                self.config.m,
                self.config.ef_construction,
                size,
                crc,
                next_id,
                _DTYPES.index(self.config.dtype),
            )
            body = head + np.ascontiguousarray(ids, dtype="<u8").tobytes()
            with meta_tmp.open("wb") as f:
                f.write(body + _CRC.pack(zlib.crc32(body)))
                f.flush()
                os.fsync(f.fileno())
            os.replace(meta_tmp, directory / META_NAME)
            fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        finally:
            index_tmp.unlink(missing_ok=True)
            meta_tmp.unlink(missing_ok=True)

    @classmethod
    def load(
        cls, directory: Path, dim: int, config: IndexConfig, *, generation: int, snapshot_crc: int, count: int
    ) -> tuple[Hnsw, npt.NDArray[np.uint64], int] | None:
        """The saved index with the ids of columns 0..count-1 and the next id, if it matches this very
        snapshot and config; None (and why, in the log) otherwise."""
        reason = _check(directory, dim, config, (generation, snapshot_crc, count))
        if isinstance(reason, str):
            log.info("HNSW index in %s not used (%s); rebuilding it from the store", directory, reason)
            return None
        ids, next_id = reason
        index = cls(dim, config)
        try:
            index._index.load(str(directory / INDEX_NAME))
        except (RuntimeError, ValueError) as exc:
            log.info("HNSW index in %s not used (%s); rebuilding it from the store", directory, exc)
            return None
        index._index.expansion_search = config.ef_search  # type: ignore[misc]  # as in set_ef_search
        if len(index._index) != count:
            log.info(
                "HNSW index in %s holds %d keys, not %d; rebuilding", directory, len(index._index), count
            )
            return None
        return index, ids, next_id


def _check(  # noqa: PLR0911 (one return per reason to rebuild)
    directory: Path, dim: int, config: IndexConfig, snapshot: tuple[int, int, int]
) -> tuple[npt.NDArray[np.uint64], int] | str:
    generation, snapshot_crc, count = snapshot
    try:
        data = (directory / META_NAME).read_bytes()
    except FileNotFoundError:
        return "no saved index"
    except OSError as exc:
        return f"cannot read {META_NAME}: {exc}"
    if (
        len(data) < _META.size + _CRC.size
        or zlib.crc32(data[: -_CRC.size]) != _CRC.unpack(data[-_CRC.size :])[0]
    ):
        return f"{META_NAME} is damaged"
    magic, version, gen, snap_crc, n, d, m, efc, size, crc, next_id, dtype = _META.unpack_from(data)
    if magic != _MAGIC or version != _VERSION:
        return f"{META_NAME} has another format"
    if (gen, snap_crc) != (generation, snapshot_crc):
        return "it was saved for another snapshot"
    if (n, d, m, efc, dtype) != (count, dim, config.m, config.ef_construction, _DTYPES.index(config.dtype)):
        return "it was built with other parameters or keys"
    if len(data) != _META.size + 8 * n + _CRC.size:
        return f"{META_NAME} is damaged"
    try:
        if _file_crc(directory / INDEX_NAME, sync=False) != (size, crc):
            return f"{INDEX_NAME} does not match its meta"
    except OSError as exc:
        return f"cannot read {INDEX_NAME}: {exc}"
    ids = np.frombuffer(data, dtype="<u8", count=n, offset=_META.size).astype(np.uint64)
    return ids, int(next_id)


def _file_crc(path: Path, *, sync: bool) -> tuple[int, int]:
    crc = 0
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
        if sync:
            os.fsync(f.fileno())
    return size, crc
